"""The ticket outside the IMP loop: keep it pruned in any training loop, load it back, export it.

- :mod:`incop.ticket.masking`: :func:`apply_masks`, masks enforced in the user's own loop;
- :mod:`incop.ticket.formats`: the export formats (a registry: one entry per format);
- :mod:`incop.ticket.loading`: :func:`load_ticket` from a run folder, a checkpoint or an export.
"""

from incop.ticket.formats import FORMATS, export_ticket
from incop.ticket.loading import Ticket, load_ticket
from incop.ticket.masking import MaskHandle, apply_masks

__all__ = ["FORMATS", "MaskHandle", "Ticket", "apply_masks", "export_ticket", "load_ticket"]
