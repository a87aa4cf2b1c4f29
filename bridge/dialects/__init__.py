"""Dialects: sans-IO wire protocols, bytes or messages in, events out, and back.

Every dialect has two roles with the same API (``receive``, ``send``, ``send_audio``):
the *platform* side, which owns the call, and the *app* side. See ``_events`` for the
contract and PROTOCOLS.md for the wire facts.
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
from ._rtp import RtpApp, RtpPlatform, RtpSession
from ._sln import DTMF_DIGITS, SlnApp, SlnPlatform, decode_control, encode_control
from ._spec import Capabilities, ChunkRule, DialectSpec, WireFormat
from ._telnyx import TelnyxApp, TelnyxError, TelnyxPlatform
from ._twilio import TwilioApp, TwilioPlatform
from ._vonage import VonageApp, VonagePlatform

__all__ = [
    "DTMF_DIGITS",
    "HANGUP_FRAME",
    "AsteriskWsApp",
    "AsteriskWsPlatform",
    "Audio",
    "AudioSocketApp",
    "AudioSocketPlatform",
    "AudioSocketWsApp",
    "AudioSocketWsPlatform",
    "Capabilities",
    "CarrierStats",
    "ChunkRule",
    "Clear",
    "Cleared",
    "Connected",
    "DialectSpec",
    "Drained",
    "Dtmf",
    "Event",
    "ExotelApp",
    "ExotelPlatform",
    "FlowControl",
    "Hangup",
    "Mark",
    "Message",
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
    "VonageApp",
    "VonagePlatform",
    "WireFormat",
    "audio_kind",
    "decode_control",
    "encode_control",
    "mark_text",
]
