"""The PEFT methods: one file per hand-written method or family; importing a module registers its
method(s) in :mod:`adapters.registry`. Methods import only the core (``adapters.core``, ``.registry``,
``.backbones``) and each other, never ``adapters.io``.
"""
from . import selective  # noqa: F401
from . import ssf  # noqa: F401
from . import tsa  # noqa: F401
from . import lora  # noqa: F401
from . import layernorm  # noqa: F401
from . import adaptformer  # noqa: F401
from . import vpt  # noqa: F401
from . import unet  # noqa: F401
from . import svdiff  # noqa: F401
from . import difffit  # noqa: F401
from . import unet_lora  # noqa: F401
from . import bottleneck  # noqa: F401
from . import convpass  # noqa: F401
from . import fact  # noqa: F401
from . import repadapter  # noqa: F401
from . import mona  # noqa: F401
from . import prefix  # noqa: F401
from . import conv_adapter  # noqa: F401
