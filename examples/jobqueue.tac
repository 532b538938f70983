# A job queue under twistd, with no queue server to run: start this file in
# as many processes as you like,
#
#     twistd -n --pidfile= -y examples/jobqueue.tac     # in each of 3 terminals
#
# Every process stands as a candidate host of the channel "jobqueue"
# (strports.service("channel:jobqueue", ...)) and also runs a worker that
# connects to it (clientFromString(reactor, "channel:jobqueue")). The process
# that hosts hands out jobs 1..N to the workers of the other processes and
# appends each result to a file, before acknowledging it. Kill the host
# (even with SIGKILL): another process takes over, reads the results file to
# know what is done, and hands out the rest; a job whose reply died with the
# host is simply handed out again.
#
# Settings, from the environment:
#
#     JOBQUEUE_DIR      the channel's runtime directory (default: the channel's
#                       default, $XDG_RUNTIME_DIR/twisted-channel)
#     JOBQUEUE_JOBS     how many jobs there are (default 20)
#     JOBQUEUE_RESULTS  the results file (default results.txt), one line per
#                       job done: "<job> <result> <worker pid>"
#     JOBQUEUE_WORK     seconds each job takes (default 0.2)

import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from twisted_channel import IChannelLinkObserver

JOBS = int(os.environ.get("JOBQUEUE_JOBS", "20"))
RESULTS = os.path.abspath(os.environ.get("JOBQUEUE_RESULTS", "results.txt"))
WORK = float(os.environ.get("JOBQUEUE_WORK", "0.2"))
#: Seconds after which a job handed out but not done is handed out again.
LEASE = 5.0

log = Logger(namespace="jobqueue")


def escape(text):
    """
    Quote C{text} for use as one part of an endpoint string.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:")


ENDPOINT = "channel:jobqueue"
if os.environ.get("JOBQUEUE_DIR"):
    ENDPOINT += ":dir=" + escape(os.environ["JOBQUEUE_DIR"])


# The host's side: one Dispatcher per connected worker.


class Queue:
    """
    What the host knows: the jobs done (read from the results file when this
    process first serves a request, so a new host goes on where the old one
    stopped) and when each job not yet done was handed out.
    """

    def __init__(self):
        self.done = None
        self.handedOut = {}

    def load(self):
        if self.done is None:
            self.done = {}
            if os.path.exists(RESULTS):
                with open(RESULTS) as f:
                    for line in f:
                        job, result, _ = line.split()
                        self.done[int(job)] = result
            log.info("jobqueue: {count} of {jobs} jobs were done", count=len(self.done), jobs=JOBS)

    def nextJob(self):
        self.load()
        now = reactor.seconds()
        for job in range(1, JOBS + 1):
            if job in self.done:
                continue
            if now - self.handedOut.get(job, -LEASE) >= LEASE:
                self.handedOut[job] = now
                return job
        return None

    def finished(self):
        self.load()
        return len(self.done) == JOBS

    def record(self, job, result, pid):
        self.load()
        if job in self.done:
            return
        # Written before dataReceived returns, so before the message is
        # acknowledged: a result the worker was told is in, is in the file.
        descriptor = os.open(RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, f"{job} {result} {pid}\n".encode())
        finally:
            os.close(descriptor)
        self.done[job] = result
        self.handedOut.pop(job, None)
        log.info("jobqueue: job {job} done by pid {pid}", job=job, pid=pid)


class Dispatcher(Protocol):
    def dataReceived(self, data):
        words = data.split()
        peer = self.transport.getPeer().pid
        if words[0] == b"next":
            if self.factory.queue.finished():
                self.transport.write(b"finished")
            elif peer == os.getpid():
                # The host hands work to the other processes only.
                self.transport.write(b"wait")
            else:
                job = self.factory.queue.nextJob()
                self.transport.write(b"wait" if job is None else b"job %d" % job)
        elif words[0] == b"done":
            self.factory.queue.record(int(words[1]), words[2].decode(), peer)


class DispatcherFactory(Factory):
    protocol = Dispatcher

    def __init__(self):
        self.queue = Queue()


# Every process's side: one Worker, a client of whoever hosts.


@implementer(IChannelLinkObserver)
class Worker(Protocol):
    waiting = False
    finished = False

    def connectionMade(self):
        self.todo = []
        self.busy = False
        self.ask()

    def ask(self):
        self.waiting = True
        self.transport.write(b"next")

    def dataReceived(self, data):
        self.waiting = False
        words = data.split()
        if words[0] == b"job":
            self.todo.append(int(words[1]))
            self.work()
        elif words[0] == b"wait":
            reactor.callLater(0.2, self.askIfIdle)
        elif words[0] == b"finished" and not self.finished:
            self.finished = True
            log.info("jobqueue: all {jobs} jobs are done", jobs=JOBS)

    def askIfIdle(self):
        if not self.busy and not self.waiting and not self.finished:
            self.ask()

    def work(self):
        if self.busy or not self.todo:
            return
        self.busy = True
        job = self.todo.pop(0)
        reactor.callLater(WORK, self.workDone, job)

    def workDone(self, job):
        self.busy = False
        self.transport.write(b"done %d %d" % (job, job * job))
        if self.todo:
            self.work()
        else:
            self.ask()

    def linkEstablished(self, host):
        # A reply from a host that died is lost with it: ask the new one.
        if self.waiting:
            self.ask()

    def linkLost(self, reason):
        pass


class WorkerService(service.Service):
    def startService(self):
        super().startService()
        endpoint = clientFromString(reactor, ENDPOINT + ":timeout=0")
        endpoint.connect(Factory.forProtocol(Worker))


application = service.Application("jobqueue")
strports.service(ENDPOINT, DispatcherFactory()).setServiceParent(application)
WorkerService().setServiceParent(application)
