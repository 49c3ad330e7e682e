"""``--log csv``: ``metrics.csv``, every epoch record as a row, for spreadsheets and pandas."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from incop.core.callbacks import LOGGERS, Logger

if TYPE_CHECKING:
    from incop.engine.outputs import RunWriter


CSV_FILE = "metrics.csv"
#: The columns, in order: every key an epoch record can have (empty where a record lacks it).
COLUMNS = (
    "level", "epoch", "phase", "remaining_fraction", "train_loss", "train_accuracy", "lr",
    "val_loss", "val_accuracy", "val_metric", "distance", "epi_similarity", "train_flops",
    "train_seconds", "eval_seconds", "flow_seconds",
)  # fmt: skip


class CSVLogger(Logger):
    """Rewrites ``metrics.csv`` whole after every epoch (to a temporary name, then renamed),
    from the records of ``metrics.jsonl``: a resumed run's CSV holds exactly the epochs its
    ``metrics.jsonl`` keeps."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.rows: list[dict[str, Any]] | None = None

    @classmethod
    def open(cls, writer: RunWriter, config: Any) -> CSVLogger:
        return cls(writer)

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        from incop.engine.outputs import METRICS_FILE, read_metrics

        if self.rows is None:  # the records before this one: none, or a resumed run's
            path = self.writer.root / METRICS_FILE
            self.rows = read_metrics(path)[:-1] if path.exists() else []
        self.rows.append(record)
        text = io.StringIO()
        table = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
        table.writeheader()
        table.writerows(self.rows)
        self.writer.folder.write_bytes(CSV_FILE, text.getvalue().encode())


LOGGERS.register("csv", "metrics.csv: every epoch record as a row")(CSVLogger)
