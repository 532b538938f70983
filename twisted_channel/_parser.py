"""
The C{channel:} endpoint string: C{channel:NAME[:key=value]...}.

The drop-in in C{twisted/plugins} imports L{ChannelEndpointParser} from
here; this module imports no reactor, so installing the plugin never
chooses one for the application.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

#: Each option of the endpoint string, with its keyword in L{ChannelEndpoint}.
OPTIONS = {
    "dir": "directory",
    "timeout": "timeout",
    "maxMessageSize": "maxMessageSize",
    "maxBufferSize": "maxBufferSize",
    "transport": "transport",
    "handshakeTimeout": "handshakeTimeout",
    "failover": "failover",
    "maxHostBufferSize": "maxHostBufferSize",
}

_SIZE = re.compile(r"([0-9]+)([KMG]i?B?)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"channel endpoint {what} is not valid UTF-8") from None
    return value


def parseSize(option: str, text: str) -> int:
    """
    A size in bytes: digits with an optional binary suffix, C{K}, C{M} or
    C{G} (C{16M} is 16 MiB).

    @raise ValueError: naming the option, if it is not one.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{option}={text!r} is not a size: use a whole number of bytes, "
            "optionally with K, M or G (as in 16M)"
        )
    digits, unit = match.groups()
    return int(digits) * _UNITS[(unit or "")[:1].lower()]


def parseTimeout(text: str, option: str = "timeout") -> float:
    """
    Seconds, as a decimal number.

    @raise ValueError: if it is not one.
    """
    try:
        return float(text)
    except ValueError:
        meaning = " (0 waits for ever)" if option == "timeout" else ""
        raise ValueError(
            f"{option}={text!r} is not a number of seconds{meaning}"
        ) from None


def endpointArguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    Turn the parts of a C{channel:} endpoint string into keyword arguments
    for L{ChannelEndpoint}, checking each.

    @raise ValueError: naming what is wrong.
    """
    if not args:
        raise ValueError("channel endpoint needs a name: channel:NAME[:key=value]...")
    if len(args) > 1:
        extra = ", ".join(repr(_text(a, "argument")) for a in args[1:])
        raise ValueError(
            f"channel endpoint takes one name then key=value options; "
            f"unexpected {extra}"
        )
    from ._clusteroptions import CLUSTER_OPTIONS, parseClusterOption
    from ._directory import checkName

    result: dict[str, Any] = {"name": checkName(_text(args[0], "name"))}
    for rawKey, rawValue in kwargs.items():
        key = _text(rawKey, "option")
        value = _text(rawValue, f"option {key}")
        if key in CLUSTER_OPTIONS:
            # Across machines: docs/cluster.md.
            result[CLUSTER_OPTIONS[key]] = parseClusterOption(key, value)
            continue
        if key not in OPTIONS:
            known = ", ".join(f"{k}=" for k in [*OPTIONS, *CLUSTER_OPTIONS])
            raise ValueError(f"unknown channel endpoint option {key!r}; known: {known}")
        if key == "dir":
            if not value:
                raise ValueError("dir= is empty")
            result["directory"] = value
        elif key == "timeout":
            result["timeout"] = parseTimeout(value)
        elif key == "handshakeTimeout":
            result["handshakeTimeout"] = parseTimeout(value, key)
        elif key == "transport":
            if value not in ("unix", "tcp"):
                raise ValueError(
                    f"transport={value!r}: use transport=unix or transport=tcp"
                )
            result["transport"] = value
        elif key == "failover":
            if value not in ("resend", "close"):
                raise ValueError(
                    f"failover={value!r}: use failover=resend (go on with the "
                    "next host) or failover=close (end the connection)"
                )
            result["failover"] = value
        else:
            result[OPTIONS[key]] = parseSize(key, value)
    return result


@implementer(
    IPlugin,
    IStreamServerEndpointStringParser,
    IStreamClientEndpointStringParserWithReactor,
)
class ChannelEndpointParser:
    """
    Parses C{channel:NAME[:key=value]...} for C{serverFromString},
    C{clientFromString} and C{strports}.
    """

    prefix = "channel"

    def _parse(
        self, reactor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        from ._endpoint import ChannelEndpoint

        arguments = endpointArguments(args, kwargs)
        name = arguments.pop("name")
        return ChannelEndpoint(reactor, name, **arguments)

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        """
        A L{ChannelEndpoint} to C{listen} on.
        """
        return self._parse(reactor, args, kwargs)

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        """
        A L{ChannelEndpoint} to C{connect} to.
        """
        return self._parse(reactor, args, kwargs)
