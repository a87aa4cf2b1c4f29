"""Dialects: sans-IO wire protocols, bytes or messages in, events out, and back.

Every dialect has two roles with the same API (:class:`Dialect`: ``receive``, ``send``,
``send_audio``): the *platform* side, which owns the call, and the *app* side. See
``_events`` for the contract and PROTOCOLS.md for the wire facts. The registry
(:func:`dialect`, :data:`SPECS`) describes each dialect once; nothing outside this
package names one.
"""

from ._asterisk_ws import AsteriskWsApp, AsteriskWsPlatform
from ._audiosocket import HANGUP_FRAME, AudioSocketApp, AudioSocketPlatform, audio_kind
from ._carrier import CarrierStats
from ._encapsulated import AudioSocketWsApp, AudioSocketWsPlatform, RtpWsApp, RtpWsPlatform
from ._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    Error,
    Event,
    FlowControl,
    Hangup,
    Mark,
    Message,
    Start,
    Stats,
    StatsRequest,
    Stop,
    mark_text,
)
from ._exotel import ExotelApp, ExotelPlatform
from ._plivo import PlivoApp, PlivoPlatform
from ._registry import (
    DEFAULT_ENCAPSULATION,
    DEFAULT_TRANSPORT,
    SPECS,
    Dialect,
    UnknownDialect,
    accept_messages,
    call_leg_for,
    carriers,
    cli_name,
    dialect,
    encapsulations,
    transports,
)
from ._rtp import RtpApp, RtpPlatform, RtpSession
from ._sln import DTMF_DIGITS, SlnApp, SlnPlatform, decode_control, encode_control
from ._spec import (
    AppLeg,
    AppParams,
    CallLeg,
    Capabilities,
    ChunkRule,
    DialectSpec,
    FormatError,
    Option,
    OptionError,
    PlatformParams,
    WireFormat,
)
from ._telnyx import TelnyxApp, TelnyxError, TelnyxPlatform
from ._twilio import TwilioApp, TwilioPlatform
from ._vonage import VonageApp, VonagePlatform

__all__ = [
    "DEFAULT_ENCAPSULATION",
    "DEFAULT_TRANSPORT",
    "DTMF_DIGITS",
    "HANGUP_FRAME",
    "SPECS",
    "AppLeg",
    "AppParams",
    "AsteriskWsApp",
    "AsteriskWsPlatform",
    "Audio",
    "AudioSocketApp",
    "AudioSocketPlatform",
    "AudioSocketWsApp",
    "AudioSocketWsPlatform",
    "CallLeg",
    "Capabilities",
    "CarrierStats",
    "ChunkRule",
    "Clear",
    "Cleared",
    "Connected",
    "Dialect",
    "DialectSpec",
    "Drained",
    "Dtmf",
    "Error",
    "Event",
    "ExotelApp",
    "ExotelPlatform",
    "FlowControl",
    "FormatError",
    "Hangup",
    "Mark",
    "Message",
    "Option",
    "OptionError",
    "PlatformParams",
    "PlivoApp",
    "PlivoPlatform",
    "RtpApp",
    "RtpPlatform",
    "RtpSession",
    "RtpWsApp",
    "RtpWsPlatform",
    "SlnApp",
    "SlnPlatform",
    "Start",
    "Stats",
    "StatsRequest",
    "Stop",
    "TelnyxApp",
    "TelnyxError",
    "TelnyxPlatform",
    "TwilioApp",
    "TwilioPlatform",
    "UnknownDialect",
    "VonageApp",
    "VonagePlatform",
    "WireFormat",
    "accept_messages",
    "audio_kind",
    "call_leg_for",
    "carriers",
    "cli_name",
    "decode_control",
    "dialect",
    "encapsulations",
    "encode_control",
    "mark_text",
    "transports",
]
