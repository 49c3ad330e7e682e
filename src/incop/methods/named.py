"""Named methods: a name for a set of settings (pruner, stopping rule and their options) that
makes one published method. Everything a method sets stays overridable, and ``incop list``
shows them all. A new method: one ``METHODS.register`` entry, here or in its component's file.
"""

from __future__ import annotations

from typing import Any

from incop.core.registry import Registry

#: Method name -> the config values it sets. Everything stays overridable.
METHODS: Registry[dict[str, Any]] = Registry("method")
#: The mask part of mask-gf and mask-if (``mask_eps``): the fraction of alive weights whose
#: next-prune decision may still change. The lower quartile of the distances logged in
#: retraining epochs >= 2 of fixed-E SAP runs (lenet5, Fashion-MNIST, validation split):
#: 0.0602 (docs/mask.md); the cost-frontier study ran mask-gf and mask-if with it.
MASK_EPS = 0.06
#: sap-mask's eps: the cheapest point of {0.03, 0.06, 0.12, 0.2} within half a point of the
#: dense validation accuracy in the cost-frontier study (docs/defaults.md); the top of the grid.
SAP_MASK_EPS = 0.2
METHODS.register("lth", "Lottery Ticket IMP: 20% of the alive weights a level, E epochs")(
    {"pruner": "lth", "rate": 0.2, "stop": "fixed"}
)
METHODS.register("random", "random pruning at 20% a level, E epochs (sanity baseline)")(
    {"pruner": "random", "rate": 0.2, "stop": "fixed"}
)
METHODS.register("sap", "SAP: the PQ Index sets how many to prune, E epochs a level")(
    {"pruner": "sap", "stop": "fixed"}
)
#: sap-acc's delta: the cheapest point of {-0.005, 0, 0.005, 0.01, 0.02} within half a point
#: of the dense validation accuracy in the cost-frontier study (docs/defaults.md), measured with
#: a final fine-tune from theta*; without one, 0 (back at a*) is the rule's own meaning.
METHODS.register("sap-acc", "SAP, a level ends once validation accuracy is back near a*")(
    {"pruner": "sap", "stop": "accuracy", "delta": 0.02}
)
#: The flow methods' eps, in units of the flow's noise floor sigma at theta*: the cheapest
#: point within half a point of the dense validation accuracy of each of the four families in
#: the cost-frontier study (lenet5, Fashion-MNIST, 5 seeds; docs/defaults.md). 3 is the top of
#: the grid {0.5, 1, 1.5, 2, 3}. The absolute eps of docs/eps.md (a lower quartile of
#: retraining distances) was crossed at random, about one epoch in four.
FLOW_EPS = {"eps_mode": "noise", "eps": 3.0}
METHODS.register("incop-if", "InCoP-IF: SAP, a level ends once the information flow is back")(
    {"pruner": "sap", "stop": "if", **FLOW_EPS, "distance": "l2", "if_summary": "mean"}
)
METHODS.register("incop-gf", "InCoP-GF: SAP, a level ends once the gradient flow is back")(
    {"pruner": "sap", "stop": "gf", **FLOW_EPS, "distance": "relative"}
)
# The flow alone decides (no accuracy clause): what the InCoP claim is about.
METHODS.register("incop-if-flow", "incop-if without the accuracy clause: the flow alone")(
    {**METHODS.get("incop-if"), "accuracy_clause": False}
)
METHODS.register("incop-gf-flow", "incop-gf without the accuracy clause: the flow alone")(
    {**METHODS.get("incop-gf"), "accuracy_clause": False}
)
METHODS.register("sap-mask", "SAP, a level ends once the next prune's mask stops changing")(
    {"pruner": "sap", "stop": "mask", "eps": SAP_MASK_EPS}
)
#: Pruning at initialisation: no warm-up, one prune of the untrained network to
#: target_remaining, one training phase of max_epochs. 0.1 is the least sparse of the three
#: fractions the frontier benchmark compares (10%, 5%, 2%).
_AT_INIT = {"warmup_epochs": 0, "levels": 1, "stop": "fixed", "target_remaining": 0.1}
METHODS.register("synflow", "SynFlow at init to target_remaining, then one training phase")(
    {**_AT_INIT, "pruner": "synflow"}
)
METHODS.register("snip", "SNIP at init to target_remaining, then one training phase")(
    {**_AT_INIT, "pruner": "snip"}
)
METHODS.register("random-init", "random at init to target_remaining (baseline)")(
    {**_AT_INIT, "pruner": "random"}
)


#: LOMP (Zhang et al. 2024, LIMIT.md B4): dense training with an l1 term (5e-5, the official
#: value for fully connected nets) and no weight decay, one global magnitude prune to the
#: predicted pruning limit, no retraining and no fine-tune (the official procedure).
METHODS.register("lomp", "l1-trained dense network, one magnitude prune to the pruning limit")(
    {"pruner": "lth", "levels": 1, "stop": "fixed", "max_epochs": 0, "min_epochs": 0,
     "finetune_epochs": 0, "target_remaining": "limit", "l1": 5e-5, "weight_decay": 0.0}
)  # fmt: skip


#: The cheap baselines an efficient-IMP claim is judged against (issue 26). One-shot: the dense
#: warm-up, one global magnitude prune straight to target_remaining (0.1, as the at-init
#: methods), then one fine-tune as long as a level's default retraining (10 epochs).
METHODS.register("oneshot", "dense warm-up, one magnitude prune to target_remaining, fine-tune")(
    {"pruner": "lth", "levels": 1, "stop": "fixed", "max_epochs": 0, "min_epochs": 0,
     "finetune_epochs": 10, "target_remaining": 0.1}
)  # fmt: skip
#: Learning-rate rewinding (Renda et al. 2020): SAP's rate, the weights kept after each prune
#: and a fresh optimiser whose schedule restarts each level: what ``rewind: lr`` already does.
METHODS.register("lr-rewind", "SAP, the weights kept after each prune, the schedule restarted")(
    {"pruner": "sap", "stop": "fixed", "rewind": "lr"}
)


#: Dynamic sparse training (issue 26; METHOD.md section 8): sparse from initialisation at
#: target_remaining (0.1, as the at-init methods), the mask moved during one training phase
#: of max_epochs; the drop and update defaults are the RigL paper's (0.3, every 100 steps,
#: until 75% of training).
_DYNAMIC = {**_AT_INIT, "finetune_epochs": 0}
METHODS.register("rigl", "RigL: sparse from init, weights regrown by the dense gradient")(
    {**_DYNAMIC, "pruner": "rigl"}
)
METHODS.register("set", "SET: sparse from init, weights regrown at random")(
    {**_DYNAMIC, "pruner": "set"}
)


#: TAS (Dong & Yang 2019; TAS.md A9): theta* the teacher, one architecture search to
#: flop_ratio of the MACs, the argmax network trained afresh with knowledge distillation from
#: theta* (alpha 0.9, T 4) as level 1: 30 search and 30 student epochs, the budgets TAS.md
#: sets for mlp and lenet5 on this machine (TAS: 600 and 300 + 5).
METHODS.register("tas", "TAS: search widths and depths to flop_ratio of the MACs, distil")(
    {"pruner": "tas", "levels": 1, "stop": "fixed", "max_epochs": 30, "min_epochs": 0,
     "finetune_epochs": 0, "rewind": "lr", "distill": "all"}
)  # fmt: skip
