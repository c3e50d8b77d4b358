"""ipgraph's node families. Importing this package registers every node type into ``ipgraph.engine.REGISTRY``.

Layout: ``core/`` is what every family uses (runtime, model manager, value types, shared widgets and checks);
``models/`` the model file formats several families read (single-file checkpoints, tokenizer); ``tiny/`` every
bundled tiny model. Each family is one package holding its nodes next to the model code they need:
``comfy/`` (ComfyUI core nodes that are thin adapters), ``diffusion/`` (checkpoints, text encoding, sampling,
latents, inpainting), ``image/`` (image files, image and
mask operations), ``ipadapter/`` (CLIP vision, IP-Adapter, image embeddings), ``controlnet/``. A new family
(ComfyUI compatibility, LoRA, FaceID, AnimateDiff, training) is a new package here plus one import below.
"""

from . import comfy  # noqa: F401
from .animatediff import nodes as _animatediff  # noqa: F401
from .controlnet import nodes as _controlnet  # noqa: F401
from .diffusion import batch as _sampling_batch  # noqa: F401
from .diffusion import conditioning, conditioning_ops, custom_sampling, inpaint, latent, loaders, sampling  # noqa: F401
from .faceid import nodes as _faceid  # noqa: F401
from .image import batch, image_io, image_ops, mask  # noqa: F401
from .ipadapter import clip_vision, embeds  # noqa: F401
from .ipadapter import nodes as _ipadapter  # noqa: F401
from .ipadapter import plus_nodes as _ipadapter_plus  # noqa: F401
from .lora import merge as _merge  # noqa: F401
from .lora import nodes as _lora  # noqa: F401
from .training import nodes as _training  # noqa: F401
from .video import nodes as _video  # noqa: F401

# isort: split
# last: it registers SaveImageWebsocket only when no family above already did
from .image import save_websocket  # noqa: F401,E402
