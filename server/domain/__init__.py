"""The pure domain shared by the services and the rule job: events, profiles, the rule language.

No I/O and no framework imports here: the streaming job calls exactly these functions.
"""
