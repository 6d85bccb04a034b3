"""The GDPR duties beyond the call itself, each over the vault and the configuration.

``subject``: the data subject's rights (access export, erasure); ``breach``: the 72-hour breach
register (Art. 33/34); ``ropa``: the Art. 30 records, generated; ``vcon``: the vCon export with
its lawful-basis attachment; ``recording_files``: recordings to and from WAV.
"""
