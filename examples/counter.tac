# A counter shared by many processes, configured by endpoint strings in a
# configuration file (counter.ini):
#
#     cd examples && twistd -n --pidfile= -y counter.tac   # in several terminals
#
# Each process serves the counter from its configured "listen" endpoint
# (every process is a candidate host; the elected one keeps the counter)
# and reaches it through its "connect" endpoint, adding one to it
# "increments" times. Kill the host, even with SIGKILL: the next host reads
# the state file and goes on.
#
# Each addition is counted exactly once. The channel delivers a message at
# least once across a host's death (a message the dead host received but
# had not yet acknowledged is sent again to the next), so each addition
# carries its sender's token and number, and the host remembers, in the
# same state file, the last number it counted from each sender: a resent
# addition is recognised and not counted again. The state file is written
# before the host's dataReceived returns, that is, before the addition is
# acknowledged.

import configparser
import json
import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="counter")

config = configparser.ConfigParser(delimiters=("=",), interpolation=None)
CONFIG = os.environ.get("COUNTER_CONFIG", "counter.ini")
if not config.read(CONFIG):
    raise SystemExit(f"counter.tac: cannot read the configuration file {CONFIG}")
settings = config["counter"]
LISTEN = settings["listen"]
CONNECT = settings["connect"]
STATE = os.path.abspath(settings.get("state", "counter.json"))
INCREMENTS = settings.getint("increments", 100)
INTERVAL = settings.getfloat("interval", 0.05)


# The host's side.


class Counter:
    """
    The counter's value, and the last addition counted from each sender,
    loaded from the state file when this process first serves a request.
    """

    def __init__(self):
        self.state = None

    def load(self):
        if self.state is None:
            try:
                with open(STATE) as f:
                    self.state = json.load(f)
            except FileNotFoundError:
                self.state = {"value": 0, "seen": {}}
            log.info("counter: starting from {value}", value=self.state["value"])
        return self.state

    def add(self, token, number):
        state = self.load()
        if number > state["seen"].get(token, 0):
            state["value"] += 1
            state["seen"][token] = number
            temporary = STATE + ".new"
            with open(temporary, "w") as f:
                json.dump(state, f)
            os.replace(temporary, STATE)
        return state["value"]


class CounterServer(Protocol):
    def dataReceived(self, data):
        words = data.decode().split()
        counter = self.factory.counter
        if words[0] == "add":
            value = counter.add(words[1], int(words[2]))
        else:
            value = counter.load()["value"]
        self.transport.write(b"value %d" % value)


class CounterFactory(Factory):
    protocol = CounterServer

    def __init__(self):
        self.counter = Counter()


# Every process's side.


class Adder(Protocol):
    def connectionMade(self):
        self.token = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.added = 0
        self.loop = LoopingCall(self.addOne)
        self.loop.start(INTERVAL)

    def addOne(self):
        if self.added == INCREMENTS:
            self.loop.stop()
            log.info(
                "counter: pid {pid} made its {count} additions",
                pid=os.getpid(),
                count=INCREMENTS,
            )
            self.transport.write(b"get")
            return
        self.added += 1
        self.transport.write(f"add {self.token} {self.added}".encode())

    def dataReceived(self, data):
        if self.added == INCREMENTS and not self.loop.running:
            log.info("counter: the value is {value}", value=int(data.split()[1]))


class AdderService(service.Service):
    def startService(self):
        super().startService()
        clientFromString(reactor, CONNECT).connect(Factory.forProtocol(Adder))


application = service.Application("counter")
strports.service(LISTEN, CounterFactory()).setServiceParent(application)
AdderService().setServiceParent(application)
