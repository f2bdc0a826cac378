"""QEMU's text formats, read and written as QEMU 10.0 does.

``cstring``: the C string functions its URI parsers use.  ``keyval``: the
keyval syntax.  ``json``: its JSON dialect.  ``qapi``: reading one QAPI
struct as its input visitor does.  Nothing here knows what an address or a
channel is: ``fdchannel.address`` and ``fdchannel.channel`` build on these.
"""
