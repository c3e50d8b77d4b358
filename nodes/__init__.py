"""ipgraph's node families. Importing this package registers every node type into ``ipgraph.engine.REGISTRY``.

Layout: ``core/`` is what every family uses (runtime, model manager, value types, shared widgets and checks);
``models/`` the model file formats several families read (single-file checkpoints, tokenizer); ``tiny/`` every
bundled tiny model. Each family is one package holding its nodes next to the model code they need:
``diffusion/`` (checkpoints, text encoding, sampling, latents, inpainting), ``image/`` (image files, image and
mask operations), ``ipadapter/`` (CLIP vision, IP-Adapter, image embeddings), ``controlnet/``. A new family
(ComfyUI compatibility, LoRA, FaceID, AnimateDiff, training) is a new package here plus one import below.
"""

from .controlnet import nodes as _controlnet  # noqa: F401
from .diffusion import conditioning, inpaint, latent, loaders, sampling  # noqa: F401
from .faceid import nodes as _faceid  # noqa: F401
from .image import image_io, image_ops, mask  # noqa: F401
from .ipadapter import clip_vision, embeds  # noqa: F401
from .ipadapter import nodes as _ipadapter  # noqa: F401
from .lora import merge as _merge  # noqa: F401
from .lora import nodes as _lora  # noqa: F401
