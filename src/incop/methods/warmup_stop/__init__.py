"""When the dense warm-up ends (METHOD.md section 8), one file per warm-up stop; importing this
package registers them (a new one: its file, and its line here)."""

from incop.methods.warmup_stop.epi import EPI_THRESHOLD, EPIStop
from incop.methods.warmup_stop.stop import WARMUP_STOPS, WarmupStop, mask_iou

__all__ = ["EPI_THRESHOLD", "WARMUP_STOPS", "EPIStop", "WarmupStop", "mask_iou"]
