"""What runs a method: the IMP loop (``imp``) and the parts it delegates to, training and
evaluation (``training``, ``precision``, ``fastpath``), masks (``masks``), the final fine-tune
(``finetune``), resume state (``resume``), data parallelism (``distributed``), the run folder
(``outputs``, ``folders``), and a run built from a config (``experiment``)."""
