"""kt_swarm: pretrained models teach each other, sample by sample (see README.md).

    kt_swarm.run(config, models=..., data=..., out=...)   a whole run from Python (docs/python-api.md)
    kt_swarm.swarm_loss, participant_loss, ...           the method's loss in your own loop (docs/method.md)
"""
from kt_swarm.api import RunResult, run
from kt_swarm.errors import UserError
from kt_swarm.objectives import participant_grad, participant_loss, swarm_loss
from kt_swarm.roles import STRATEGIES, assign_teachers, teaching_weights

__all__ = ["run", "RunResult", "UserError", "STRATEGIES", "assign_teachers", "teaching_weights", "swarm_loss",
           "participant_loss", "participant_grad"]
__version__ = "0.1.0"
