"""Topology file: nodes, quantum links, users with SLA profiles, applications.

One YAML file describes a keyplane network and both run modes (embedded and
distributed) read it. :func:`load_topology` validates it once, with pydantic models
that forbid unknown keys, and on any problem raises :class:`ConfigError` whose message
names each bad field by its path (``links[2].length_km``) and its line in the file.

Units are in the field names (``_km``, ``_db``, ``_hz``, ``_bps``, ``_s``).
Priorities: a larger ``priority`` is served first (0 is the lowest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from keyplane.config_checks import topology_problems
from keyplane.config_users import Application, ApplicationQos, HybridPolicy, SlaProfile, User
from keyplane.entanglement_config import EntanglementSection
from keyplane.errors import ConfigError
from keyplane.trust import STATION_ROLE, UntrustedNode
from keyplane.yamlpos import (
    MESSAGE_PATH,
    format_path,
    line_for,
    parse_message_path,
    yaml_line_index,
)

__all__ = [
    "EXAMPLES_DIR",
    "Application",
    "ApplicationQos",
    "DecoySettings",
    "DeviceEndpoint",
    "Eavesdropper",
    "EmulatedSource",
    "Etsi014Source",
    "Etsi015Settings",
    "HybridPolicy",
    "LinkSource",
    "Node",
    "NodePorts",
    "PostProcessing",
    "QuantumLink",
    "SlaProfile",
    "TeraflowSdnListener",
    "Topology",
    "UntrustedNode",
    "User",
    "example_path",
    "load_topology",
    "parse_topology",
]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""An id that is also a bus topic token: letters, digits, '_' and '-'."""


Port = Annotated[int, Field(ge=1, le=65535)]


class NodePorts(_Model):
    """Fixed TCP ports of a node's servers (for firewalls, probes and clients configured by
    hand). A port left out is a free one the node picks at start; wherever it is, the node
    writes its URLs to ``endpoints.json``."""

    api: Port | None = None
    """The applications' HTTPS server: ETSI 014 at its root, ETSI 004 under ``/etsi004``."""
    etsi015: Port | None = None
    """The node's ETSI 015 SDN agent (RESTCONF over HTTPS, for the SDN Controller)."""
    ops: Port | None = None
    """``keyplane node``'s operations server (``/healthz``, ``/readyz``, ``/metrics``) on
    127.0.0.1; ``--ops`` overrides it. Unused by ``keyplane run`` (one server for all)."""


class Node(_Model):
    """A trusted node: one key manager, its QKD modules and its SDN agent."""

    id: Ident
    """Node id, unique; also its key manager's id and bus topic token."""
    name: str = ""
    """Free-text display name."""
    address: str = "127.0.0.1"
    """Host the node's servers advertise to peers and applications (IP or DNS name)."""
    ports: NodePorts = Field(default_factory=NodePorts)
    """Fixed ports of its servers (default: free ones)."""


class Eavesdropper(_Model):
    """Intercept-resend attacker on a fibre: measures a ``fraction`` of pulses."""

    position_km: Annotated[float, Field(ge=0.0)] = 0.0
    """Where on the fibre she taps it, km from ``endpoints[0]``."""
    fraction: Probability = 1.0
    """Share of the pulses she intercepts and resends (0 to 1)."""


class DecoySettings(_Model):
    """Decoy-state BB84 intensities (mean photon numbers) and their probabilities.

    The three-intensity (signal, weak decoy, vacuum) protocol of Ma et al., PRA 72, 012326.
    """

    mu_signal: Annotated[float, Field(gt=0.0)] = 0.5
    """Mean photon number of signal pulses."""
    mu_decoy: Annotated[float, Field(ge=0.0)] = 0.1
    """Mean photon number of weak decoy pulses."""
    mu_vacuum: Annotated[float, Field(ge=0.0)] = 0.0
    """Mean photon number of vacuum decoys (0 for true vacuum)."""
    p_signal: Probability = 0.8
    """Probability that a pulse is a signal pulse."""
    p_decoy: Probability = 0.15
    """Probability that a pulse is a weak decoy."""
    p_vacuum: Probability = 0.05
    """Probability that a pulse is a vacuum decoy (the three sum to 1)."""

    @model_validator(mode="after")
    def _check(self) -> DecoySettings:
        total = self.p_signal + self.p_decoy + self.p_vacuum
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"p_signal + p_decoy + p_vacuum must be 1, got {total}")
        if not self.mu_signal > self.mu_decoy >= self.mu_vacuum:
            raise ValueError("intensities must satisfy mu_signal > mu_decoy >= mu_vacuum")
        return self


AUTO_Z_BASIS_GRID: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
"""The basis biases ``z_basis_probability: auto`` chooses among (the twin picks one per link,
keyplane.physical.analytic.auto_z_basis)."""


class PostProcessing(_Model):
    """Post-processing parameters of one link's QKD modules."""

    block_size_bits: Annotated[int, Field(ge=1024, le=10_000_000)] = 100_000
    """Sifted bits per post-processing block (finite-size statistics improve with size)."""
    qber_threshold: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.11
    """Abort a block whose estimated QBER (its own test-basis error rate) exceeds this
    (fraction)."""
    security_epsilon: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-10
    """Secrecy parameter eps_sec of each block's finite-key bound (Lim et al. 2014)."""
    cascade_schedule: Literal["original", "yanetal", "option7"] = "yanetal"
    """Cascade block-size schedule (keyplane.physical.cascade). yanetal leaks the least
    (f_EC 1.04-1.07 on 10^6-bit blocks at QBER 1-8 %) for about 3.5x the rounds of
    original; links run in worker processes (keyplane.physical.pool), off the key
    managers' event loop."""
    reconciliation: Literal["cascade", "ldpc"] = "cascade"
    """Error correction: Cascade (interactive, about log2(block) round trips per pass) or
    LDPC syndrome decoding (keyplane.physical.reconcile_ldpc: a few round trips per block,
    far more CPU; needs the ldpc package, pip install 'keyplane[ldpc]'). LDPC frames that
    fail to decode fall back to Cascade within the block."""
    ldpc_frame_bits: Annotated[int, Field(ge=1024, le=10_000_000)] = 100_000
    """LDPC frame length: a block is split into near-equal frames of at most this many
    bits, each with its own code (longer frames leak less, decode no faster per bit)."""
    ldpc_start_efficiency: Annotated[float, Field(ge=1.0, le=2.0)] = 1.15
    """LDPC starting syndrome length, as f_EC of the block's estimated QBER."""
    ldpc_max_extensions: Annotated[int, Field(ge=0, le=32)] = 8
    """Times an undecoded LDPC frame asks for 4 % more checks before it goes to Cascade."""
    finite_key_statistics: Literal["chernoff", "hoeffding"] = "chernoff"
    """Statistics of the finite-key bound: multiplicative Chernoff, or Hoeffding (the
    paper's)."""
    z_basis_probability: Literal["auto"] | Annotated[float, Field(gt=0.0, lt=1.0)] = "auto"
    """Probability of preparing and measuring in the Z basis; the more probable basis is
    the key basis, the other the test basis. ``auto``: the bias that maximizes the link's
    finite-key curve at half its block size (0.5 for blocks up to a few 10^5 bits, 0.65
    at 10^6 on a default link, more for larger blocks, less for noisy links;
    keyplane.physical.analytic.auto_z_basis); 0.5 for the measured protocols."""
    analytic_formula: Literal["gllp-vacuum", "gllp"] = "gllp-vacuum"
    """Analytic mode's rate: GLLP with the vacuum term, or the published infinite-decoy
    GLLP rate."""



class EmulatedSource(_Model):
    """The link's key comes from keyplane's emulated QKD modules (the digital twin), run
    beside the KMs in worker processes (the default)."""

    kind: Literal["emulated"] = "emulated"
    """``emulated``."""


class DeviceEndpoint(_Model):
    """How one KM reaches its end of a QKD device over ETSI GS QKD 014, as the device's SAE.

    ``cert``/``key``/``ca`` default to the KM's own certificate and the network CA
    (``<state>/certs``), which is what ``keyplane device`` trusts; give them for a device of
    another vendor. Relative paths are taken from the working directory.
    """

    url: Annotated[str, Field(pattern=r"^https://[^\s/]+(/\S*)?$")]
    """The device end's ETSI 014 base URL (``https://host:port``)."""
    sae_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """This KM's SAE id at the device (default: the node id)."""
    cert: str | None = None
    """This KM's client certificate for the device (PEM; default: the KM's own)."""
    key: str | None = None
    """Its private key (PEM; default: the KM's own)."""
    ca: str | None = None
    """The CA that signed the device's certificate (default: the network CA)."""


class Etsi014Source(_Model):
    """The link's key comes from a QKD device reached over ETSI GS QKD 014.

    Each KM is the SAE of its end of the device. Both KMs act as master in turn: a KM
    calls ``enc_keys`` at its end (slave: the peer KM's SAE id), hands the key_IDs to the
    peer KM over the KM-to-KM channel, the peer calls ``dec_keys`` at its end, and both
    store the keys as one block of link key with an id they agree on.
    """

    kind: Literal["etsi014"]
    """``etsi014``."""
    ends: dict[str, DeviceEndpoint]
    """Node id -> that node's end of the device (both endpoints of the link)."""
    key_size_bits: Annotated[int, Field(ge=64, le=8192, multiple_of=8)] = 256
    """The device's key size, bits (what the KMs ask ``enc_keys`` for)."""
    keys_per_request: Annotated[int, Field(ge=1, le=1024)] = 64
    """Keys a KM takes per ``enc_keys`` (one block of link key)."""
    poll_interval_s: Annotated[float, Field(gt=0.0)] = 0.5
    """How long a KM waits before asking its device again when it had no key to give."""
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0
    """Bound on one ETSI 014 request to the device and on the peer KM's answer."""


LinkSource = Annotated[EmulatedSource | Etsi014Source, Field(discriminator="kind")]


class QuantumLink(_Model):
    """A fibre between two nodes with one QKD module pair (Alice at ``endpoints[0]``).

    ``source`` says where its key comes from: the emulated modules (default) or a QKD
    device over ETSI 014 (:class:`Etsi014Source`); the physics fields describe what the
    emulation (or ``keyplane device``) models.
    """

    id: Ident | None = None
    """Link id (default ``<a>-<b>`` from the endpoints)."""
    endpoints: tuple[str, str]
    """The two nodes; the QKD transmitter (Alice) sits at the first."""
    length_km: Annotated[float, Field(ge=0.0, le=1000.0)]
    """Fibre length, km."""
    attenuation_db_per_km: Annotated[float, Field(ge=0.0)] = 0.2
    """Fibre loss, dB/km (0.2 for standard single-mode fibre at 1550 nm)."""
    insertion_loss_db: Annotated[float, Field(ge=0.0)] = 1.0
    """Fixed loss of connectors and the receiver's optics, dB."""
    detector_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Detection efficiency of the receiver's detectors (0 to 1)."""
    dark_count_probability: Probability = 1e-6
    """Dark-count probability per detection gate."""
    misalignment: Annotated[float, Field(ge=0.0, le=0.5)] = 0.015
    """Optical misalignment error probability ``e_d``."""
    repetition_rate_hz: Annotated[float, Field(gt=0.0)] = 1e8
    """Pulse repetition rate of the source, Hz."""
    protocol: Literal["bb84-decoy", "analytic", "mdi-qkd", "tf-qkd", "bbm92", "mdi-qkd-analytic",
                      "tf-qkd-analytic", "bbm92-analytic"] = "bb84-decoy"
    """``bb84-decoy``: emulated decoy-state BB84 with the full post-processing; ``analytic``: key
    rate from the formula, no per-bit emulation (large networks). ``mdi-qkd``, ``tf-qkd``
    (sending-or-not-sending) and ``bbm92`` (entangled pairs from a source in the middle):
    emulated through the same post-processing, with ``station`` the untrusted node in the
    middle; their ``-analytic`` forms give the rate of the cited formula
    (docs/physical.md, "Measurement-assisted and entanglement-based links")."""
    decoy: DecoySettings = DecoySettings()
    """Decoy-state intensities and probabilities."""
    postprocessing: PostProcessing = PostProcessing()
    """Post-processing parameters."""
    eavesdropper: Eavesdropper | None = None
    """An intercept-resend eavesdropper on this fibre from the start (none by default)."""
    enabled: bool = True
    """False: the link starts cut (no key until restored)."""
    source: LinkSource = EmulatedSource()
    """Where the link's key comes from: ``{kind: emulated}`` (default) or a QKD device
    over ETSI 014 (``{kind: etsi014, ends: {...}}``, docs/devices.md)."""
    mean_pairs_per_pulse: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    """``bbm92``: the source's mean number of photon pairs per pulse (``lambda``)."""
    station: Ident | None = None
    """The untrusted node in the middle of the link (an ``untrusted_nodes`` id): the
    measurement station of a measurement-assisted link or the source of an
    entanglement-based one. It cannot learn the link's key (docs/quantum-networking.md)."""

    @model_validator(mode="after")
    def _check(self) -> QuantumLink:
        if self.endpoints[0] == self.endpoints[1]:
            raise ValueError("a link needs two different endpoints")
        if isinstance(self.source, Etsi014Source) and set(self.source.ends) != set(
                self.endpoints):
            raise ValueError(f"source.ends must name exactly the endpoints {list(self.endpoints)}")
        middle = STATION_ROLE.get(self.protocol.removesuffix("-analytic"))
        if (middle is None) != (self.station is None):
            raise ValueError(f"station: protocol {self.protocol} needs "
                             f"{'a ' + middle if middle else 'no'} station")
        if self.eavesdropper is not None and self.eavesdropper.position_km > self.length_km:
            raise ValueError("eavesdropper.position_km is beyond the fibre's length_km")
        return self

    @property
    def link_id(self) -> str:
        """The link's id: the given ``id`` or ``"<a>-<b>"``."""
        return self.id or f"{self.endpoints[0]}-{self.endpoints[1]}"


class TeraflowSdnListener(_Model):
    """A second, controller-facing ETSI 015 listener per node for an unmodified TeraFlowSDN.

    TeraFlowSDN's QKD driver cannot present a client certificate; it can send HTTP Basic
    credentials (in its device address ``user:password@host`` or a ``.netrc``). This listener
    asks every request for them, serves the plain ETSI model with unqualified top members,
    and lets a valid user write. The default mTLS listener is unchanged (docs/api/etsi015.md,
    "TeraFlowSDN").
    """

    host: str = "127.0.0.1"
    """Address the listeners bind (one TeraFlowSDN can reach, nobody else ideally)."""
    ports: dict[str, Annotated[int, Field(ge=0, le=65535)]]
    """Node id → TCP port of its listener (only these nodes get one; 0: a free port, then
    read it from endpoints.json)."""
    credentials_file: Path
    """``user:password`` lines (``#`` comments); keep it mode 0600. Relative paths are
    resolved against the working directory of the node process."""
    danger_plain_http: bool = False
    """Serve plain HTTP (TeraFlowSDN's driver speaks ``http://`` to every node unless one
    ``QKD_API_URL`` is set): credentials cross the network in clear, so only on a network
    nobody else can read. False: HTTPS with the node's certificate, no client certificate."""


class Etsi015Settings(_Model):
    """How the nodes' ETSI 015 SDN agents present themselves (docs/api/etsi015.md)."""

    unqualified_top_member: bool = False
    """Answer ``{"qkd_node": …}`` as TeraFlowSDN reads it, instead of RFC 7951's
    ``{"etsi-qkd-sdn-node:qkd_node": …}`` (also ``keyplane run/node --etsi015-unqualified``)."""
    keyplane_augment: bool = True
    """Serve keyplane's ``keyplane-qkd-provenance`` augment; False: the plain ETSI model."""
    teraflowsdn: TeraflowSdnListener | None = None
    """A second listener per node for an unmodified TeraFlowSDN (HTTP Basic); none if absent."""


class Topology(_Model):
    """The whole network description; cross-references are checked on load."""

    version: Literal[1] = 1
    """Format version (1)."""
    name: str = "keyplane"
    """Network name (shown in outputs)."""
    nodes: list[Node]
    """The nodes (at least one)."""
    links: list[QuantumLink] = Field(default_factory=list)
    """The quantum links."""
    users: list[User] = Field(default_factory=list)
    """The users and their SLA profiles."""
    applications: list[Application] = Field(default_factory=list)
    """The applications (SAEs)."""
    untrusted_nodes: list[UntrustedNode] = Field(default_factory=list)
    """Measurement stations, entanglement sources and repeaters: nodes in the middle of
    links that hold no key and need no trust (no key manager runs on them)."""
    entanglement: EntanglementSection | None = None
    """Quantum memories and repeater-chain links of the entanglement service (none: the
    network serves key streams only; docs/quantum-networking.md)."""
    etsi015: Etsi015Settings = Etsi015Settings()
    """How the nodes' ETSI 015 agents present themselves (TeraFlowSDN compatibility, the plain
    ETSI model)."""
    _links_by_node: tuple[list[QuantumLink], int, dict[str, list[QuantumLink]]] | None = (
        PrivateAttr(default=None))
    """:meth:`links_of`'s index, with the list and length it was built from (rebuilt when
    either changes): every node's start asks for its links, a scan of every link each time
    was quadratic in the network's size (1,000 nodes: seconds)."""

    @model_validator(mode="after")
    def _cross_check(self) -> Topology:
        problems = topology_problems(self)  # keyplane.config_checks: every problem at once
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def node(self, node_id: str) -> Node:
        """The node with ``node_id`` (KeyError if absent)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def application(self, sae_id: str) -> Application:
        """The application with ``sae_id`` (KeyError if absent)."""
        for a in self.applications:
            if a.sae_id == sae_id:
                return a
        raise KeyError(sae_id)

    def user(self, user_id: str) -> User:
        """The user with ``user_id`` (KeyError if absent)."""
        for u in self.users:
            if u.id == user_id:
                return u
        raise KeyError(user_id)

    def link(self, link_id: str) -> QuantumLink:
        """The link with ``link_id`` (KeyError if absent)."""
        for link in self.links:
            if link.link_id == link_id:
                return link
        raise KeyError(link_id)

    def untrusted_node(self, node_id: str) -> UntrustedNode:
        """The untrusted node with ``node_id`` (KeyError if absent)."""
        for u in self.untrusted_nodes:
            if u.id == node_id:
                return u
        raise KeyError(node_id)

    def links_of(self, node_id: str) -> list[QuantumLink]:
        """Links with ``node_id`` at one end."""
        cached = self._links_by_node
        if cached is None or cached[0] is not self.links or cached[1] != len(self.links):
            index: dict[str, list[QuantumLink]] = {}
            for link in self.links:
                for end in dict.fromkeys(link.endpoints):
                    index.setdefault(end, []).append(link)
            cached = self._links_by_node = (self.links, len(self.links), index)
        return list(cached[2].get(node_id, ()))


# --------------------------------------------------------------------------- loading


def parse_topology(text: str, source: str = "<string>") -> Topology:
    """Parse and validate topology YAML text.

    Raises:
        ConfigError: the text is not YAML, or a field is missing, unknown or invalid.
            The message names each field by path and line.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the topology must be a YAML mapping with 'nodes'")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        index = yaml_line_index(text)
        problems = []
        for err in exc.errors():
            path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.endswith("]")))
            path = tuple(p for p in path if p not in ("function-after",))
            line = line_for(index, path)
            where = f"{source}:{line}" if line else source
            msg = err["msg"]
            if err["type"] != "value_error":
                problems.append(f"{where}: {format_path(path)}: {msg}")
                continue
            for part in msg.removeprefix("Value error, ").split("\n"):
                at, where_part = path, where
                inner = MESSAGE_PATH.match(part)
                if not path and inner:
                    # a cross-reference error: the message starts with the field's path
                    at = parse_message_path(inner.group(1))
                    part = part[inner.end():]
                    line = line_for(index, at)
                    where_part = f"{source}:{line}" if line else source
                problems.append(f"{where_part}: {format_path(at)}: {part}")
        raise ConfigError("invalid topology:\n  " + "\n  ".join(problems)) from None


EXAMPLES_DIR = Path(__file__).parent / "examples"
"""The example networks shipped with keyplane (``examples/`` in the repository)."""


def example_path(path: str | Path) -> Path | None:
    """The packaged example a missing ``path`` names, if any.

    ``paper_poc``, ``paper_poc.yaml`` and ``examples/paper_poc.yaml`` all name the packaged
    ``paper_poc.yaml``, so the documented commands work from any folder. A path that exists,
    or whose folder is not ``examples``, names no example.
    """
    p = Path(path)
    if p.exists() or (p.parent != Path(".") and p.parent.name != "examples"):
        return None
    candidate = EXAMPLES_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    return candidate if candidate.is_file() else None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (or a packaged example, see :func:`example_path`).

    Raises:
        ConfigError: the file cannot be read or is invalid (see :func:`parse_topology`).
    """
    p = example_path(path) or Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read topology file: {exc.strerror}") from exc
    return parse_topology(text, str(p))
