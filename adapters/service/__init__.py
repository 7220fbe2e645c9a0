"""`domainvlm serve`: the REST service that asks adapters about images and scans.

One app factory (`app.create_app`) assembles the routers: health, adapters and plain image VQA
from here, and those other parts of domainvlm register under the `domainvlm.routers` entry
point (`domainvlm.medical` registers the study routes), so this package never imports them.
"""
