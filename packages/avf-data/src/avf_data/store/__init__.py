"""The output folder of avf-data: one owner for its layout, logs, shards and outputs.

``folder``   layout, claim, lock, atomic writes          ``log``      append-only logs, done ids
``packer``   segments into sized shards                  ``build_store``  commit, pack, resume
``outputs``  manifest/rejects/stats from the logs        ``report``   report.md and contact sheet
``stats``    the counters of stats.json                  ``examples`` the report's bounded sample

The store knows no build: the driver (``avf_data.build``) and the sync pass hand it finished
work; it decides where bytes go and how a crash is repaired.
"""
