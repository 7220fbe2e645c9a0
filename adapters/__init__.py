"""domainvlm.adapters: the versioned store of trained domain adapters and their serving runtime.

Installed as ``domainvlm.adapters`` (never the bare name ``adapters``, which is AdapterHub's
library on PyPI). Its contents arrive with the adapter-store issue.
"""
