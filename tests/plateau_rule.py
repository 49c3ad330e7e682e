"""A stopping rule written outside incop, as a user would: one module holding its class, its
options and its registry entry, and nothing of incop changed. Importing it registers ``plateau``.
"""

from dataclasses import dataclass, field

import incop


@dataclass(frozen=True)
class PlateauOptions(incop.NoOptions):
    plateau_patience: int = incop.option(
        3, "plateau: stop after this many epochs without a better score"
    )

    def check(self):
        if self.plateau_patience < 1:
            return [incop.not_allowed("plateau_patience", self.plateau_patience, "must be >= 1")]
        return []


@dataclass
class Plateau(incop.StoppingRule):
    """Stop a level once the validation score has not improved for ``patience`` epochs."""

    patience: int = 3
    name: str = field(default="plateau", init=False)

    Options = PlateauOptions
    reasons = {"plateau": "the validation score stopped improving (patience epochs)"}

    @classmethod
    def from_options(cls, options, config):
        return cls(config.max_epochs, config.min_epochs, patience=options.plateau_patience)

    def prepare(self, reference):
        super().prepare(reference)
        self.best, self.waited = None, 0

    def state_dict(self):
        return {**super().state_dict(), "best": self.best, "waited": self.waited}

    def load_state_dict(self, state, reference):
        super().load_state_dict(state, reference)
        self.best, self.waited = state["best"], state["waited"]

    def met(self, score, distance):
        if self.best is None or score > self.best:
            self.best, self.waited = score, 0
        else:
            self.waited += 1
        return "plateau" if self.waited >= self.patience else None


incop.register_rule("plateau", "a level ends once validation stops improving")(Plateau)
