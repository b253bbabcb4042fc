"""The trial core: a policy applied to a copy of the base model, fine-tuned and measured.

``space`` turns an Optuna trial into a :class:`~autoprune.policy.Policy`; ``surgery`` removes the
channels it names; ``finetune`` trains the pruned copy; ``metrics`` measures it; ``evaluate`` runs
those steps for one policy (no Optuna), and ``objective`` is the Optuna glue around it.
"""
