"""domainvlm: adapt pretrained vision-language models to hospital imaging and robot perception.

Heavy dependencies (torch, transformers, peft) are imported by the submodules that need them,
so that ``import domainvlm`` and ``domainvlm --help`` stay fast.
"""

__version__ = "0.1.0"
