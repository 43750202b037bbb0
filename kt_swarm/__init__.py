"""kt_swarm: pretrained models teach each other, sample by sample (see README.md)."""
from kt_swarm.objectives import participant_grad, participant_loss, swarm_loss
from kt_swarm.roles import STRATEGIES, assign_teachers, teaching_weights

__all__ = ["STRATEGIES", "assign_teachers", "teaching_weights", "swarm_loss", "participant_loss", "participant_grad"]
__version__ = "0.1.0"
