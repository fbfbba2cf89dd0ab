"""Downloads through torchvision for users with a network; a clear message for those without."""
from __future__ import annotations

import os

from pipeline.sources import SourceError


def torchvision_download(dataset: str, root: str, where_to_get: str, **kwargs) -> str:
    """Download ``torchvision.datasets.<dataset>`` into ``root`` and return ``root``."""
    os.makedirs(root, exist_ok=True)
    try:
        import torchvision.datasets as tvd

        getattr(tvd, dataset)(root=root, download=True, **kwargs)
    except Exception as e:  # no network, a proxy, a checksum failure...
        raise SourceError(
            f"{dataset}: no --source given and the download into {root} failed ({type(e).__name__}: {e}). "
            f"Get {where_to_get} and pass --source PATH.") from None
    return root
