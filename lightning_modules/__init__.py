"""One LightningModule per task (``gpt``, ``classification`` with ``vit`` and ``resnet``) over
a shared base (``base``: hyper-parameters, the optimizer in its rotated space, the schedule).
May import ``rotations`` and ``callbacks``; never ``datamodules`` or ``adamrot``."""
