"""The ticket outside the IMP loop: keep it pruned in any training loop, load it back, export it.

- :mod:`incop.tools.ticket.masking`: :func:`apply_masks`, masks enforced in the user's own loop;
- :mod:`incop.tools.ticket.formats`: the export formats (a registry: one entry per format);
- :mod:`incop.tools.ticket.loading`: :func:`load_ticket` from a run folder, a checkpoint or an
  export.
"""

from incop.tools.ticket.formats import FORMATS, export_ticket
from incop.tools.ticket.loading import Ticket, load_ticket
from incop.tools.ticket.masking import MaskHandle, apply_masks

__all__ = ["FORMATS", "MaskHandle", "Ticket", "apply_masks", "export_ticket", "load_ticket"]
