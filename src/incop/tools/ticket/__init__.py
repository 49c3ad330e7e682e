"""The ticket outside the IMP loop: keep it pruned in any training loop, load it back, export it.

- :mod:`incop.tools.ticket.masking`: :func:`apply_masks`, masks enforced in the user's own loop;
- :mod:`incop.tools.ticket.formats`: the export formats (a registry: one entry per format);
- :mod:`incop.tools.ticket.loading`: :func:`load_ticket` from a run folder, a checkpoint or an
  export.
"""

from incop.core.lazy import exports

# Imported on first use: `incop export --help` lists the formats without importing torch.
__getattr__, __dir__ = exports(
    __name__,
    {
        "incop.tools.ticket.formats": ("FORMATS", "export_ticket"),
        "incop.tools.ticket.loading": ("Ticket", "load_ticket"),
        "incop.tools.ticket.masking": ("MaskHandle", "apply_masks"),
    },
)

__all__ = ["FORMATS", "MaskHandle", "Ticket", "apply_masks", "export_ticket", "load_ticket"]
