# A twistd application serving a channel through strports, for
# tests/test_twistd.py and as an example:
#
#     TWISTED_CHANNEL_TEST_NAME=jobs TWISTED_CHANNEL_TEST_DIR=/tmp/tc-x \
#     TWISTED_CHANNEL_TEST_RECORD=/tmp/tc-x/record twistd -n -y channel.tac
#
# Every process started this way is a candidate host of the channel; the
# first hosts it and the others stand by.  The host appends one line per
# event to the record file, written before the call returns so that nothing
# acknowledged is missing even if the process is killed right after:
#
#     <pid> started <channel name>     when the factory starts (the endpoint
#                                      is listening: hosting or standing by)
#     <pid> message <text>             for each message received

import os

from twisted.application import service, strports
from twisted.internet.protocol import Factory, Protocol

NAME = os.environ["TWISTED_CHANNEL_TEST_NAME"]
DIRECTORY = os.environ["TWISTED_CHANNEL_TEST_DIR"]
RECORD = os.environ["TWISTED_CHANNEL_TEST_RECORD"]


def escape(text):
    """
    Quote C{text} for use as one part of an endpoint string.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:")


def record(kind, text):
    line = f"{os.getpid()} {kind} {text}\n".encode("utf-8")
    descriptor = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


class Recorder(Protocol):
    def dataReceived(self, data):
        record("message", data.decode("utf-8", "backslashreplace"))


class RecorderFactory(Factory):
    protocol = Recorder

    def startFactory(self):
        record("started", NAME)


application = service.Application("channel-demo")
strports.service(
    f"channel:{escape(NAME)}:dir={escape(DIRECTORY)}", RecorderFactory()
).setServiceParent(application)
