"""
Twisted plugin drop-in for the C{channel:} endpoint.

A shim: the parser lives in L{twisted_channel}; nothing here imports or
installs a reactor.
"""

from twisted_channel._parser import ChannelEndpointParser

channelEndpointParser = ChannelEndpointParser()
