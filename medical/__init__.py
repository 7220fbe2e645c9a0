"""domainvlm.medical: DICOM in, de-identified VQA data out, a REST service, answers as DICOM SR.

Installed as ``domainvlm.medical``. Its contents arrive with the medical-module issue.
"""
