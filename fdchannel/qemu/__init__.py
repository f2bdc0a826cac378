"""QEMU's formats, read and written as QEMU does.

``cstring``: the C string functions its URI parsers use.  ``keyval``: the
keyval syntax.  ``json``: its JSON dialect.  ``qapi``: reading one QAPI
struct as its input visitor does.  ``vmstate``: the VMState subsections
CprState carries after its descriptors (``FdState.qemu_subsections``).
Nothing here knows what an address, a channel or a codec is:
``fdchannel.address``, ``fdchannel.channel`` and ``fdchannel.codecs``
build on these.
"""
