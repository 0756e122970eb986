"""Building the object a config node names, as Hydra's `instantiate` does."""

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_node(node: DictConfig, declared: tuple[str, ...] = (), **kwargs):
    """`instantiate(node, **kwargs)` without the fields onestop declares for itself.

    A method node says which method it is (`name`, `adapter`) and a logger node which logger (`kind`), so
    that stages ask a field instead of parsing `_target_`; the function or class the node names never
    takes those fields.
    """
    settings = OmegaConf.to_container(node, resolve=True)
    for key in declared:
        settings.pop(key, None)
    return instantiate(settings, **kwargs)
