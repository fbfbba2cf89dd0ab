"""Model architectures, registered by name. Every model is a ``Classifier``: a backbone that maps
images to an embedding and a ``head`` on it, so self-supervised pre-training can swap the head."""
from models.base import (MODELS, Classifier, NormedLinear, PosthocAdjusted, Standardized, create_model,  # noqa: F401
                         make_head)
from models import autoencoders, resnet_cifar, resnet_tv  # noqa: E402,F401  (registers the architectures)
