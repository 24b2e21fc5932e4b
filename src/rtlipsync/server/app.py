"""The FastAPI app: sessions over WebRTC, speech and interruption, the seed's routes.

Routes kept compatible with the seed (LiveTalking-style clients work unchanged):
``POST /offer`` → ``{sdp, type, sessionid}``; ``POST /human`` (``sessionid``, ``text``,
``type`` echo|chat, ``interrupt``); ``POST /interrupt_talk``; ``POST /is_speaking`` →
``{"code": 0, "data": bool}``; ``GET /digital_human/check``. Bad requests get a 4xx whose
body says what was wrong (``{"code": -1, "msg": ...}``); the server and other sessions carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import tempfile
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
from aiortc import RTCSessionDescription
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder as jsonable
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Match

from rtlipsync import __version__
from rtlipsync.compose import SessionMaker
from rtlipsync.engines.base import LipSyncEngine
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.errors import InputError
from rtlipsync.face.avatar import (
    DEFAULT_AVATAR,
    NAME_PATTERN,
    avatar_path,
    check_name,
    face_box,
    list_avatars,
    load_avatar,
)
from rtlipsync.media.audio import load_audio, to_int16
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.media.video import IMAGE_EXTS, VIDEO_EXTS, Mp4Writer
from rtlipsync.paths import (
    ID_PATTERN,
    MAX_NAME,
    MAX_PATH,
    check_id,
    data_dir,
    data_root,
    inside_root,
    records_dir,
)
from rtlipsync.server import jobs
from rtlipsync.server.access import (
    PUBLIC,
    TOKEN_COOKIE,
    Access,
    BodyLimit,
    SameOrigin,
    is_operator,
    presented_secret,
    same,
)
from rtlipsync.server.tasks import Tasks, TasksFull
from rtlipsync.session import MAX_PERSONA, MAX_TEXT, MODES, NO_LLM, Session
from rtlipsync.speech.asr import ASRProvider, PocketSphinxASR
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.llm import LLMConfig
from rtlipsync.speech.realtime import RealtimeBrain, RealtimeConfig
from rtlipsync.speech.tts import TTSProvider
from rtlipsync.transport.recorder import Recorder, RecordingFailed
from rtlipsync.transport.webrtc import (
    NegotiationFailed,
    WebRTCPeer,
    ice_credentials,
    media_pool,
)
from rtlipsync.transport.websocket import ClientStalled, WebSocketSink, receive, send_frames

log = logging.getLogger(__name__)

AUDIO_EXTS = {".wav", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".flac", ".webm"}


def uploads_dir() -> Path:
    return data_dir("uploads")


def jobs_dir() -> Path:
    return data_dir("jobs")


@dataclass
class ServerConfig:
    avatar: str = DEFAULT_AVATAR
    max_sessions: int = 8
    max_sessions_per_client: int = 4  # from one address: one client cannot take every place
    stalled_client_timeout: float = 10.0  # s a WebSocket client may read nothing before it goes
    max_upload_mb: float = 50.0  # audio uploads
    # Audio is refused past this length once decoded (a small file can decode to hours):
    # for /humanaudio, render jobs and the seed's /digital_human/gen.
    max_audio_seconds: float = 600.0
    # Hosts a job's webhook may name although they resolve to a loopback or private address
    # (which are refused otherwise: a webhook must not reach into the server's own network).
    webhook_hosts: list[str] = field(default_factory=list)
    max_avatar_upload_mb: float = 300.0  # images and videos to prepare as avatars
    max_request_kb: float = 1024.0  # any other request's body (an SDP offer is a few KB)
    max_queued_tasks: int = 8  # avatar preparations and renders waiting or running at once
    # Folders outside the data root from which requests may name files to read (the seed's
    # video_path and tts_path); nothing is ever written there.
    media_roots: list[str] = field(default_factory=list)
    # Required on every route but the page and the probes when set (see server.access);
    # its holder may use every session. None: callers on this machine may.
    access_token: str | None = None
    # Host headers answered: loopback names by default, so a web page whose name an
    # attacker points at 127.0.0.1 (DNS rebinding) reaches nothing; ["*"] when serving the
    # network ("rtlipsync serve --host 0.0.0.0" sets it unless allowed_hosts is given).
    allowed_hosts: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    # Web pages of other origins allowed to drive the server from a browser (WebSockets,
    # POSTs); the server's own page always is, and clients that are not browsers send none.
    allowed_origins: list[str] = field(default_factory=list)
    # A WebRTC peer that sends no RTCP receiver report (browsers send one about every
    # second) for this long is gone: its session is closed. ICE consent alone takes 30 s.
    peer_timeout: float = 10.0
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    engine: Callable[[], LipSyncEngine] = CpuEngine  # makes each session's engine
    llm: LLMConfig | None = None  # chat mode's language model; None: chat repeats instead
    asr: Callable[[], ASRProvider] = PocketSphinxASR  # for sessions that send a microphone
    tts: Callable[[], TTSProvider] = EspeakTTS  # each session's voice
    realtime: RealtimeConfig | None = None  # realtime mode's service; None: no realtime mode
    mode: str = "chat"  # for sessions that do not choose one
    # The microphone's VAD: speech shorter than min_speech (s) never interrupts the avatar;
    # min_silence (s) of quiet ends the user's turn.
    vad: dict[str, float] = field(default_factory=dict)
    # Start the worker processes (recognition, background tasks) with the server, so their
    # first use never starts an interpreter while sessions are live: a worker starting up
    # made a live session's video skip a frame or two. `rtlipsync serve` turns it on.
    warm_workers: bool = False
    # This server's share of session ids, (k, n): those equal to k modulo n. A cluster's
    # workers draw from shares that do not overlap, so no two of them open the same id.
    id_share: tuple[int, int] = (0, 1)


class ErrorReply(BaseModel):
    """What every error answers: ``code`` -1 and the sentence that says what was wrong."""

    code: int = -1
    msg: str


ERRORS = {
    400: "the request is wrong: the message says how",
    401: "the server's access token is missing or wrong",
    403: "not allowed: another's session without its secret, outside the data root, a link "
    "out of it, another site's page",
    404: "no such session, avatar, task or job",
    409: "in the way: the avatar exists, the job is not done, already recording, a mode "
    "this server has no service for",
    411: "a body without a Content-Length",
    413: "the body or the upload is too large",
    415: "an upload of a type that is not accepted",
    422: "a field is missing or of the wrong type: the message names it",
    429: "this address holds as many sessions as one client may",
    503: "the server is full: sessions, or tasks waiting",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents: its own ``statuses`` (`document_gates` adds
    those of the gates every request passes)."""
    return {status: {"model": ErrorReply, "description": ERRORS[status]} for status in statuses}


def document_gates(app: FastAPI) -> None:
    """Add to each route's documented answers those its requests can get before it runs:
    401 without the access token (but on the public routes), and on a POST 400 for a body
    that does not parse, 403 from another site's page, 411 and 413 from the body limit."""
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        gates = set() if route.path in PUBLIC else {401}
        if "POST" in route.methods:
            gates |= {400, 403, 411, 413}
        fields = route.dependant
        if route.body_field or fields.path_params or fields.query_params:
            gates.add(422)  # (in our shape: FastAPI's own is not what we answer)
        for status, answer in answers(*sorted(gates)).items():
            route.responses.setdefault(status, answer)


# What the OpenAPI document states of a field our own checks hold it to (with messages
# that say more than a schema error): generators of valid requests then make valid ones.
NAME = {"pattern": NAME_PATTERN}
ID = {"pattern": ID_PATTERN}
WEBHOOK = "^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?([/?#][^\\s]*)?$"
DATA_PATH = {  # (at most MAX_NAME characters between slashes)
    "minLength": 1,
    "maxLength": MAX_PATH,
    "pattern": f"^/?([^/\\x00]{{1,{MAX_NAME}}}/+)*[^/\\x00]{{0,{MAX_NAME}}}$",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


MAX_MEMORY = 200  # remembered messages an offer may carry over from an earlier session


class Said(BaseModel):
    """One remembered message of a conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)


class Offer(BaseModel):
    sdp: str = Field(json_schema_extra={"pattern": "^\\s*v=[\\s\\S]*m="})
    type: str = Field("offer", json_schema_extra={"enum": ["offer"]})
    avatar: str | None = Field(None, json_schema_extra=NAME)
    # repeat | chat | realtime; default: the server's
    mode: str | None = Field(None, json_schema_extra={"enum": list(MODES)})
    persona: str | None = None  # the system prompt (chat) or instructions (realtime)
    # The conversation so far, to continue one held elsewhere (a cluster's gateway sends the
    # memory of a session whose worker stopped); the chat brain keeps its last turns.
    memory: list[Said] | None = Field(None, max_length=MAX_MEMORY)


# A WebSocket session's ``memory`` message: the same conversation an offer may carry.
MEMORY = TypeAdapter(Annotated[list[Said], Field(max_length=MAX_MEMORY)])


class SessionRequest(BaseModel):
    """A request about one session: its id (0: the oldest, for the operator) and, from
    anyone but the operator, its secret (here or in the X-Session-Secret header)."""

    sessionid: int
    secret: str | None = None


class Readiness(BaseModel):
    status: str  # ready | not ready
    missing: list[str]


class TokenRequest(BaseModel):
    token: str


class ModeRequest(SessionRequest):
    mode: str = Field(json_schema_extra={"enum": list(MODES)})


class PersonaRequest(SessionRequest):
    text: str = Field(json_schema_extra={"maxLength": MAX_PERSONA})


class HumanRequest(SessionRequest):
    text: str = Field(json_schema_extra={"maxLength": MAX_TEXT, "pattern": "\\S"})
    type: str = Field("echo", json_schema_extra={"enum": ["echo", "chat"]})
    interrupt: bool = False


class PreprocessRequest(BaseModel):
    user_id: str = Field(json_schema_extra=ID)
    request_id: str = Field(json_schema_extra=ID)
    streamer_id: str = Field(json_schema_extra=NAME)
    video_path: str = Field(json_schema_extra=DATA_PATH)  # inside the data root


class GenRequest(BaseModel):
    user_id: str = Field(json_schema_extra=ID)
    request_id: str = Field(json_schema_extra=ID)
    streamer_id: str = Field(json_schema_extra=NAME)
    tts_path: str = Field(json_schema_extra=DATA_PATH)  # inside the data root
    chunk_id: str | int = Field(0, json_schema_extra={"pattern": ID_PATTERN, "minimum": 0})


class AudioTypeRequest(SessionRequest):
    audiotype: str | int  # the name of an action clip prepared as an avatar; 0 or "" = back
    reinit: bool = True


class RecordRequest(SessionRequest):
    type: str = Field(json_schema_extra={"enum": ["start_record", "end_record"]})


@dataclass
class _Taken:
    """The session ids a new session may not have: those in use here, and those outside
    this server's share (`ServerConfig.id_share`)."""

    used: set[int]
    share: int
    shares: int

    def __contains__(self, session_id: object) -> bool:
        assert isinstance(session_id, int)
        return session_id in self.used or session_id % self.shares != self.share


ENDED_SECRETS = 256  # ended sessions whose secrets are kept (for their recordings)


@dataclass
class _Live:
    session: Session
    peer: WebRTCPeer | None = None  # None for a WebSocket session
    recorder: Recorder | None = None
    client: str = ""  # the address it was opened from


class Sessions:
    """Every live session of this process, by id, with a limit."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._live: dict[int, _Live] = {}  # oldest first
        # Each session's secret, kept a while after it ends so its owner can still fetch
        # its recording (the newest ENDED_SECRETS ended ones).
        self._secrets: OrderedDict[int, str] = OrderedDict()
        self._opening: Counter[str] = Counter()  # sessions being opened, by client address
        self.maker = SessionMaker(config)  # what sessions share: LLM, recogniser, metrics
        self.metrics = self.maker.metrics

    def __len__(self) -> int:
        return len(self._live)

    def ids(self) -> list[int]:
        """The live sessions' ids, oldest first."""
        return list(self._live)

    def warm(self) -> None:
        """Start the recogniser's worker and load its model now (in the background)."""
        self.maker.warm()

    def get(self, session_id: int) -> Session:
        return self.live(session_id).session

    def live(self, session_id: int) -> _Live:
        live = self._live.get(session_id)
        if live is None:
            raise ApiError(404, f"unknown session {session_id}: start one with POST /offer")
        return live

    def secret(self, session_id: int) -> str:
        return self._secrets[session_id]

    def allowed(self, session_id: int, operator: bool, secret: str | None) -> int:
        """The id of the session a request may use: ``session_id`` (0: the oldest live
        one) if the caller is the operator or presents its secret; else a 403 that is the
        same whether the session exists or not (see `rtlipsync.server.access`)."""
        if session_id == 0:
            if not operator:
                raise ApiError(
                    403,
                    "sessionid 0 (the oldest session) is for the server's operator; "
                    "name your session and send its secret",
                )
            if not self._live:
                raise ApiError(404, "no session is live: start one with POST /offer")
            return next(iter(self._live))
        expected = self._secrets.get(session_id)  # (none: unknown, refused all the same)
        if not operator and (expected is None or not same(secret, expected)):
            if secret is None:
                raise ApiError(
                    403,
                    f"session {session_id} is not yours: send the secret that opened it "
                    f"(X-Session-Secret, or a secret field)",
                )
            raise ApiError(403, f"wrong secret for session {session_id}")
        return session_id

    def control(self, session_id: int, operator: bool, secret: str | None) -> Session:
        """The live session a request may drive (see `allowed`)."""
        return self.get(self.allowed(session_id, operator, secret))

    async def start_recording(self, session_id: int) -> Path:
        live = self.live(session_id)
        if live.recorder is not None:
            raise ApiError(409, f"session {session_id} is already recording")
        w, h = live.session.avatar.size
        stamp = time.strftime("%Y%m%d-%H%M%S")
        live.recorder = Recorder(records_dir() / f"{session_id}-{stamp}.mp4", w, h)
        live.session.add_sink(live.recorder)
        log.info("recording started", extra={"session": session_id})
        return live.recorder.path

    async def end_recording(self, session_id: int) -> Path:
        live = self.live(session_id)
        recorder = live.recorder
        if recorder is None:
            raise ApiError(409, f"session {session_id} is not recording: send start_record first")
        live.session.remove_sink(recorder)
        live.recorder = None
        try:
            await asyncio.to_thread(recorder.close)
        except RecordingFailed as exc:
            raise ApiError(409, str(exc)) from exc
        log.info("recording saved: %d frames", recorder.frames, extra={"session": session_id})
        return recorder.path

    async def _new_session(
        self,
        avatar_name: str | None,
        mode: str | None = None,
        persona: str | None = None,
        memory: list[Said] | None = None,
    ) -> Session:
        mode = mode or self.config.mode
        self._check_mode(mode)
        try:
            avatar = await asyncio.to_thread(load_avatar, avatar_name or self.config.avatar)
        except InputError as exc:
            raise ApiError(404, str(exc)) from exc
        used = self._live.keys() | self._secrets.keys()  # (an ended one's recording keeps its)
        share, shares = self.config.id_share
        session = self.maker.make(avatar, persona, _Taken(used, share, shares))
        if memory:
            session.restore([said.model_dump() for said in memory])
        await self.set_mode(session, mode)
        return session

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "realtime" and self.config.realtime is None:
            raise ApiError(
                409,
                "realtime mode needs a realtime service: set realtime.url in the config, or "
                "RTLIPSYNC_REALTIME_URL or OPENAI_API_KEY",
            )

    async def set_mode(self, session: Session, mode: str) -> None:
        """Switch who answers; realtime mode opens (and leaving it closes) the service's
        socket. A service that cannot be reached leaves the session in repeat mode with a
        notice that says why."""
        self._check_mode(mode)
        if mode == "realtime" and session.realtime is None:
            assert self.config.realtime is not None
            session.realtime = RealtimeBrain(session, self.config.realtime, session.persona)
            # The conversation so far goes on: the chat's (which holds what was carried
            # over), or what was carried over from elsewhere.
            chat = session.chat.history if session.chat is not None else []
            if chat or session.carried:
                session.realtime.restore(chat or session.carried)
            session.mode = mode
            if not await session.realtime.start():
                await session.realtime.close()
                session.realtime = None
            return
        if mode != "realtime" and session.realtime is not None:
            brain, session.realtime = session.realtime, None
            await brain.close()
        session.mode = mode
        # Said when chat is chosen, not at the first message; gone when it no longer holds.
        if mode == "chat" and session.chat is None:
            session.set_notice(NO_LLM)
        elif session.notice == NO_LLM:
            session.notice = ""

    def _register(self, session: Session, peer: WebRTCPeer | None = None, client: str = "") -> None:
        self._live[session.id] = _Live(session, peer, client=client)
        self._secrets[session.id] = secrets.token_urlsafe(24)
        while len(self._secrets) > len(self._live) + ENDED_SECRETS:
            ended = next(s for s in self._secrets if s not in self._live)  # the oldest ended
            del self._secrets[ended]
        self.metrics.sessions.set(len(self._live))
        session.start()
        if peer is not None:
            peer.start()
        kind = "WebRTC" if peer is not None else "WebSocket"
        log.info(
            "%s session opened with avatar %s",
            kind,
            session.avatar.name,
            extra={"session": session.id},
        )

    @contextlib.contextmanager
    def _slot(self, client: str) -> Iterator[None]:
        """Hold one of the ``max_sessions`` places while a session is being opened: the
        opening awaits (loading the avatar, negotiating), and counting only live sessions
        let 12 concurrent offers make 12 sessions with a limit of 8. One client address
        holds at most ``max_sessions_per_client`` (one could take every place)."""
        if len(self._live) + sum(self._opening.values()) >= self.config.max_sessions:
            raise ApiError(
                503, f"server is full ({self.config.max_sessions} sessions); try again later"
            )
        mine = sum(live.client == client for live in self._live.values()) + self._opening[client]
        if mine >= self.config.max_sessions_per_client:
            raise ApiError(
                429,
                f"{mine} sessions are open from your address, the most one client may hold; "
                "close one first",
            )
        self._opening[client] += 1
        try:
            yield
        finally:
            self._opening[client] -= 1
            if not self._opening[client]:
                del self._opening[client]

    async def open_websocket(
        self,
        avatar_name: str | None,
        sink: WebSocketSink,
        mode: str | None = None,
        client: str = "",
    ) -> Session:
        with self._slot(client):
            session = await self._new_session(avatar_name, mode)
            session.add_sink(sink)
            self._register(session, client=client)
        return session

    async def open(self, offer: Offer, client: str = "") -> tuple[Session, RTCSessionDescription]:
        if offer.type != "offer":
            raise ApiError(400, f"expected an SDP offer, got type {offer.type!r}")
        if "m=" not in offer.sdp or not offer.sdp.lstrip().startswith("v="):
            raise ApiError(400, "malformed SDP: it must start with v= and hold m= lines")
        with self._slot(client):
            session = await self._new_session(offer.avatar, offer.mode, offer.persona, offer.memory)
            try:
                return await self._negotiate(session, offer, client)
            except BaseException:
                await session.close()  # its realtime socket, if it opened one, too
                raise

    async def _negotiate(
        self, session: Session, offer: Offer, client: str
    ) -> tuple[Session, RTCSessionDescription]:
        peer = WebRTCPeer(
            session,
            on_gone=lambda: self.close(session.id),
            ice_servers=self.config.ice_servers,
            peer_timeout=self.config.peer_timeout,
        )
        try:
            answer = await peer.answer(offer.sdp)
        except NegotiationFailed as exc:
            raise ApiError(400, f"cannot negotiate WebRTC with this offer: {exc}") from exc
        self._register(session, peer, client)
        return session, answer

    async def close(self, session_id: int) -> bool:
        live = self._live.pop(session_id, None)
        if live is None:
            return False
        self.metrics.sessions.set(len(self._live))
        if live.recorder is not None:  # a session that ends mid-recording keeps what it sent
            live.session.remove_sink(live.recorder)
            try:
                await asyncio.to_thread(live.recorder.close)
            except RecordingFailed as exc:
                log.warning("%s", exc, extra={"session": session_id})
        await live.session.close()
        if live.peer is not None:
            await live.peer.close()
        return True

    async def close_all(self) -> None:
        for session_id in list(self._live):
            await self.close(session_id)
        await self.maker.close()


def add_gates(app: FastAPI, config: ServerConfig) -> None:
    """The checks every request passes before a route (see `rtlipsync.server.access`): its
    page's origin, the access token, the Host it names, the size of its body; and CORS for
    the other pages allowed. A cluster's gateway, the public face of its workers, has them
    too."""
    uploads = {"/humanaudio": config.max_upload_mb, "/jobs": config.max_upload_mb}
    uploads["/avatars"] = config.max_avatar_upload_mb
    app.add_middleware(SameOrigin, allowed=config.allowed_origins)
    app.add_middleware(Access, token=config.access_token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(
        BodyLimit,
        # (the form's other fields and the multipart framing come on top of the file)
        limits={path: int(mb * 1024 * 1024) + 64 * 1024 for path, mb in uploads.items()},
        default=int(config.max_request_kb * 1024),
    )
    if config.allowed_origins:
        # The pages allowed to use the server may also read its answers (CORS); outermost,
        # so a browser's preflight, which carries no token, is answered before the gates.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Secret"],
            allow_credentials=True,
        )


def create_app(config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    sessions = Sessions(config)
    tasks = Tasks(config.max_queued_tasks)

    async def save_upload(file: UploadFile, limit_mb: float, allowed: set[str]) -> Path:
        """Store an upload under the data root; refuse wrong types and sizes before work."""
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in allowed:
            raise ApiError(
                415,
                f"unsupported file type {suffix or '(none)'!r}; "
                f"expected one of {', '.join(sorted(allowed))}",
            )
        limit = int(limit_mb * 1024 * 1024)
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"upload is larger than {limit_mb:g} MB")
        if not data:
            raise ApiError(400, "the uploaded file is empty")
        path = uploads_dir() / f"{secrets.token_hex(8)}{suffix}"
        path.write_bytes(data)
        return path

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(media_pool(config.max_sessions))
        await asyncio.to_thread(load_avatar, config.avatar)  # prepare/load before the first user
        if config.warm_workers:
            sessions.warm()
            tasks.warm()
        app.state.started = True
        yield
        await sessions.close_all()
        await asyncio.to_thread(tasks.shutdown)

    # Every route answers its errors as {"code": -1, "msg": ...}, and the document states
    # each route's own (it listed only 200 and 422 while most answer 400, 404, 413 or 415).
    app = FastAPI(title="rtlipsync", version=__version__, lifespan=lifespan)
    app.state.sessions = sessions
    app.state.tasks = tasks
    app.state.started = False
    add_gates(app, config)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"code": -1, "msg": exc.message}, status_code=exc.status)

    @app.exception_handler(PermissionError)
    async def outside_root(request: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse({"code": -1, "msg": str(exc)}, status_code=403)

    @app.exception_handler(TasksFull)
    async def tasks_full(request: Request, exc: TasksFull) -> JSONResponse:
        return JSONResponse({"code": -1, "msg": str(exc)}, status_code=503)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"code": -1, "msg": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_fields(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A missing or mistyped field, in our shape (``detail`` keeps FastAPI's list)."""
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        ]
        body = {"code": -1, "msg": "; ".join(problems)[:500], "detail": jsonable(exc.errors())}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The framework's own refusals (a body that does not parse, no such route, a
        method the path lacks) in the same shape as ours."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(sorted(_methods(app, request.scope)))
        return JSONResponse(
            {"code": -1, "msg": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("rtlipsync.web").joinpath("index.html").read_text()

    @app.get(
        "/avatars/{name}/poster.jpg",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "the first frame"},
            **answers(400, 404),
        },
    )
    async def poster(name: Annotated[str, PathParam(json_schema_extra=NAME)]) -> Response:
        """The avatar's first frame: what the page shows when no session runs."""
        check_name(name)
        try:
            avatar = await asyncio.to_thread(load_avatar, name)
        except InputError as exc:
            raise ApiError(404, str(exc)) from exc
        ok, jpeg = cv2.imencode(".jpg", avatar.frames[0], [cv2.IMWRITE_JPEG_QUALITY, 90])
        return Response(jpeg.tobytes(), media_type="image/jpeg")

    @app.get("/ice_servers")
    async def ice_servers() -> dict[str, Any]:
        """The STUN/TURN servers for the browser's side of the call: the server's own, with
        TURN credentials made now where the config gives a TURN secret (a page behind a NAT
        needs a relay it can reach, not only the server)."""
        return {"code": 0, "ice_servers": ice_credentials(config.ice_servers)}

    @app.get("/avatars")
    async def avatars() -> dict[str, Any]:
        """The prepared avatars; ``face`` is where the face usually is (``[x0, y0, x1, y1]``
        pixels, or null), for a viewer to frame it."""

        def listing() -> list[dict[str, Any]]:
            return [
                {
                    "name": m["name"],
                    "kind": m["kind"],
                    "frames": m["frame_count"],
                    "width": m["width"],
                    "height": m["height"],
                    "still": m["still"],
                    "face": face_box(m["name"]),
                }
                for m in list_avatars()
            ]

        return {"code": 0, "data": await asyncio.to_thread(listing)}

    @app.post("/avatars", responses=answers(409, 415, 503))
    async def upload_avatar(
        name: Annotated[str, Form(json_schema_extra=NAME)],
        file: Annotated[UploadFile, File()],
        bbox_shift: Annotated[int, Form()] = 0,
        replace: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        """Prepare an avatar from an uploaded image or video; poll GET /tasks/{task}.
        An existing avatar is replaced only with ``replace``; the built-in one never."""
        check_name(name)
        if name == DEFAULT_AVATAR:
            raise ApiError(409, f"{name!r} is the built-in avatar; upload under another name")
        if (avatar_path(name) / "manifest.json").is_file() and not replace:
            raise ApiError(409, f"an avatar named {name!r} exists; send replace=true to replace it")
        tasks.check_room()  # before the upload is kept
        source = await save_upload(file, config.max_avatar_upload_mb, IMAGE_EXTS | VIDEO_EXTS)

        # The avatar keeps what it needs (frames, landmarks, its bank): the upload goes once
        # it is prepared or has failed.
        task = tasks.submit(
            "avatar",
            jobs.prepare,
            name,
            source,
            bbox_shift,
            cleanup=lambda: source.unlink(missing_ok=True),
        )
        return {"code": 0, "task": task.id, "name": name}

    @app.get("/tasks/{task_id}", responses=answers(404))
    async def task_state(task_id: str) -> dict[str, Any]:
        task = tasks.get(task_id)
        if task is None:
            raise ApiError(404, f"unknown task {task_id}")
        return task.public()

    @app.post("/jobs", responses=answers(404, 415, 503))
    async def create_job(
        avatar: Annotated[str, Form(json_schema_extra=NAME)],
        audio: Annotated[UploadFile, File()],
        webhook: Annotated[
            str | None, Form(json_schema_extra={"format": "uri", "pattern": WEBHOOK})
        ] = None,
    ) -> dict[str, Any]:
        """Render ``avatar`` speaking the uploaded audio into an mp4, in the background."""
        check_name(avatar)
        if webhook is not None:
            await check_webhook(webhook, config.webhook_hosts)
        if not (avatar_path(avatar) / "manifest.json").is_file() and avatar != DEFAULT_AVATAR:
            raise ApiError(404, f"no avatar named {avatar!r}; upload one with POST /avatars")
        tasks.check_room()
        source = await save_upload(audio, config.max_upload_mb, AUDIO_EXTS | VIDEO_EXTS)

        task_id = tasks.new_id()
        out = jobs_dir() / f"{task_id}.mp4"
        task = tasks.submit(
            "render",
            jobs.speak,
            avatar,
            out,
            source,
            config.max_audio_seconds,
            webhook=webhook,
            task_id=task_id,
            cleanup=lambda: (source.unlink(missing_ok=True), Mp4Writer.discard_partials(out)),
        )
        task.result["url"] = f"/jobs/{task.id}/result"
        return {"code": 0, "job": task.id}

    @app.get("/jobs/{job_id}", responses=answers(404))
    async def job_state(job_id: str) -> dict[str, Any]:
        return await task_state(job_id)

    @app.get(
        "/jobs/{job_id}/result",
        response_class=FileResponse,
        responses={
            200: {"content": {"video/mp4": {}}, "description": "the rendered video"},
            **answers(404, 409),
        },
    )
    async def job_result(job_id: str) -> FileResponse:
        task = tasks.get(job_id)
        if task is None:
            raise ApiError(404, f"unknown job {job_id}")
        if task.state != "done":
            raise ApiError(
                409, f"job {job_id} is {task.state}" + (f": {task.error}" if task.error else "")
            )
        return FileResponse(
            jobs_dir() / f"{job_id}.mp4", media_type="video/mp4", filename=f"{job_id}.mp4"
        )

    @app.post("/digital_human/preprocess", responses=answers(403, 404, 409, 503))
    async def dh_preprocess(body: PreprocessRequest) -> dict[str, Any]:
        """Seed 002: prepare ``streamer_id``'s avatar from ``video_path`` (inside the data root)."""
        check_id(body.user_id, "user_id")
        check_id(body.request_id, "request_id")
        check_name(body.streamer_id)
        if body.streamer_id == DEFAULT_AVATAR:
            raise ApiError(409, f"{DEFAULT_AVATAR!r} is the built-in avatar; use another id")
        source = existing(body.video_path, config.media_roots)
        m = await tasks.run(jobs.prepare, body.streamer_id, source)
        data = {
            "user_id": body.user_id,
            "request_id": body.request_id,
            "streamer_id": body.streamer_id,
            "frames": m["frames"],
            "faces_missing": m["faces_missing"],
        }
        # The seed's answer at the top level (its clients read it there), ours beside it.
        return {
            "user_id": body.user_id,
            "request_id": body.request_id,
            "code": 0,
            "msg": "success",
            "data": data,
        }

    @app.post("/digital_human/gen", responses=answers(403, 404, 503))
    async def dh_gen(body: GenRequest) -> dict[str, Any]:
        """Seed 002: render ``streamer_id`` speaking ``tts_path`` for one chunk of a request.

        The mp4 lands at ``outputs/USER/REQUEST/CHUNK.mp4`` under the data root.
        """
        check_id(body.user_id, "user_id")
        check_id(body.request_id, "request_id")
        chunk = check_id(str(body.chunk_id), "chunk_id")
        check_name(body.streamer_id)
        out_dir = data_dir("outputs") / body.user_id / body.request_id
        inside_root(out_dir)  # not through a link planted to write elsewhere
        audio = existing(body.tts_path, config.media_roots)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{chunk}.mp4"
        try:
            result = await tasks.run(
                jobs.speak, body.streamer_id, out, audio, config.max_audio_seconds
            )
        finally:
            Mp4Writer.discard_partials(out)  # a killed or cancelled render's unfinished file
        data = {
            "user_id": body.user_id,
            "request_id": body.request_id,
            "streamer_id": body.streamer_id,
            "chunk_id": body.chunk_id,
            "video_path": str(out.relative_to(data_root().resolve())),
            "duration": round(result["seconds"], 3),
        }
        return {
            "user_id": body.user_id,
            "request_id": body.request_id,
            "digital_human_mp4_path": str(out),  # where the seed's clients read the video
            "code": 0,
            "msg": "success",
            "data": data,
        }

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        """Prometheus metrics: per-turn latency, LLM and TTS timings, sessions, frames."""
        return Response(generate_latest(sessions.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/digital_human/check")
    async def check() -> dict[str, str]:
        return {"status": "Server is running"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (for a supervisor's probe)."""
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready: what is missing"}},
    )
    async def ready() -> JSONResponse:
        """Readiness: the default avatar is loaded and, when started with the server, the
        worker processes are up; 503 with what is missing until then."""
        missing = []
        if not app.state.started:
            missing.append("the default avatar is loading")
        if config.warm_workers and not tasks.workers:
            missing.append("the task worker is starting")
        workers = sessions.maker.workers
        if config.warm_workers and workers is not None and not workers.workers:
            missing.append("the recognition worker is starting")
        if len(sessions) >= config.max_sessions:
            missing.append(f"the server is full ({config.max_sessions} sessions)")
        body = {"status": "ready" if not missing else "not ready", "missing": missing}
        return JSONResponse(body, status_code=200 if not missing else 503)

    def mine(request: Request | WebSocket, body: SessionRequest) -> Session:
        """The session a request names, if it may drive it (`Sessions.allowed`)."""
        secret = presented_secret(request, body.secret)
        return sessions.control(body.sessionid, is_operator(request), secret)

    @app.post("/auth", responses=answers(401))
    async def auth(body: TokenRequest, request: Request) -> JSONResponse:
        """Check the access token and keep it in an HttpOnly cookie for the page (its
        images, fetches and WebSockets then carry it). Without a token set, nothing to do."""
        if config.access_token is None:
            return JSONResponse({"code": 0, "msg": "this server needs no access token"})
        if not same(body.token, config.access_token):
            raise ApiError(401, "wrong access token")
        reply = JSONResponse({"code": 0, "msg": "ok"})
        reply.set_cookie(
            TOKEN_COOKIE,
            urllib.parse.quote(body.token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return reply

    @app.post("/offer", responses=answers(404, 409, 429, 503))
    async def offer(body: Offer, request: Request) -> dict[str, Any]:
        """Open a session over WebRTC. The answer's ``secret`` is what anyone but the
        operator must present to use the session."""
        session, answer = await sessions.open(body, client_address(request))
        return {
            "sdp": answer.sdp,
            "type": answer.type,
            "sessionid": session.id,
            "secret": sessions.secret(session.id),
        }

    @app.post("/mode", responses=answers(403, 404, 409))
    async def set_mode(body: ModeRequest, request: Request) -> dict[str, Any]:
        """Who answers this session: repeat, chat or realtime."""
        session = mine(request, body)
        await sessions.set_mode(session, body.mode)
        return {"code": 0, "msg": "ok", "mode": session.mode, "notice": session.notice}

    @app.post("/persona", responses=answers(403, 404))
    async def set_persona(body: PersonaRequest, request: Request) -> dict[str, Any]:
        """The persona (system prompt / instructions) from the next reply on."""
        mine(request, body).set_persona(body.text)
        return {"code": 0, "msg": "ok"}

    @app.post("/human", responses=answers(403, 404))
    async def human(body: HumanRequest, request: Request) -> dict[str, Any]:
        session = mine(request, body)
        if body.type not in ("echo", "chat"):
            raise ApiError(400, f"type must be echo or chat, got {body.type!r}")
        if body.type == "chat":
            session.converse(body.text, interrupt=body.interrupt)
        else:
            session.say(body.text, interrupt=body.interrupt)
        return {"code": 0, "msg": "ok"}

    @app.post("/humanaudio", responses=answers(403, 404))
    async def human_audio(
        request: Request,
        sessionid: Annotated[int, Form()],
        file: Annotated[UploadFile, File()],
        secret: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Lip-sync an uploaded audio file (any format PyAV reads) in the session."""
        session = mine(request, SessionRequest(sessionid=sessionid, secret=secret))
        limit = int(config.max_upload_mb * 1024 * 1024)
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"upload is larger than {config.max_upload_mb:g} MB")
        if not data:
            raise ApiError(400, "the uploaded file is empty")
        suffix = Path(file.filename or "audio").suffix[:10]
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            samples, _ = await asyncio.to_thread(
                load_audio,
                tmp.name,
                SAMPLE_RATE,
                config.max_audio_seconds,
                Path(file.filename or "the upload").name,
            )
        # Off the event loop: queuing minutes of speech takes a few milliseconds per minute.
        await asyncio.to_thread(session.push_speech, to_int16(samples))
        return {"code": 0, "msg": "ok"}

    @app.post("/record", responses=answers(403, 404, 409))
    async def record(body: RecordRequest, request: Request) -> dict[str, Any]:
        session = mine(request, body)
        if body.type == "start_record":
            path = await sessions.start_recording(session.id)
        elif body.type == "end_record":
            path = await sessions.end_recording(session.id)
        else:
            raise ApiError(400, f"type must be start_record or end_record, got {body.type!r}")
        return {"code": 0, "msg": "ok", "file": path.name}

    @app.get(
        "/record/{session_id}",
        response_class=FileResponse,
        responses={
            200: {"content": {"video/mp4": {}}, "description": "the recording"},
            **answers(403, 404),
        },
    )
    async def download_record(
        session_id: int, request: Request, secret: str | None = None
    ) -> FileResponse:
        """The session's latest finished recording (also after the session has ended)."""
        session_id = sessions.allowed(
            session_id, is_operator(request), presented_secret(request, secret)
        )
        done = sorted(records_dir().glob(f"{session_id}-*.mp4"))
        if not done:
            raise ApiError(404, f"no recording for session {session_id}")
        return FileResponse(done[-1], media_type="video/mp4", filename=done[-1].name)

    @app.post("/set_audiotype", responses=answers(403, 404))
    async def set_audiotype(body: AudioTypeRequest, request: Request) -> dict[str, Any]:
        """Switch the idle loop to an action clip (prepared as an avatar), or back with 0."""
        session = mine(request, body)
        name = str(body.audiotype).strip()
        clip = None
        if name not in ("", "0", session.avatar.name):
            try:
                clip = await asyncio.to_thread(load_avatar, name)
            except InputError:
                w, h = session.avatar.size
                clips = [
                    a["name"]
                    for a in await asyncio.to_thread(list_avatars)
                    if (a["width"], a["height"]) == (w, h) and a["name"] != session.avatar.name
                ]
                raise ApiError(
                    404,
                    f"no action clip named {name!r}: an audiotype names an avatar of this "
                    f"session's size ({w}x{h}) to play while idle; "
                    + (f"those that fit: {', '.join(clips)}" if clips else "none is prepared")
                    + "; 0 goes back",
                ) from None
        session.show(clip)
        return {"code": 0, "msg": "ok", "showing": session.showing.name}

    @app.websocket("/humanecho")
    async def human_echo(
        ws: WebSocket, sessionid: int | None = None, secret: str | None = None
    ) -> None:
        """Seed 002's echo socket: each text message is spoken by the session.

        The session comes from ``?sessionid=`` or a JSON message's ``sessionid`` (with its
        ``secret`` from anyone but the operator); with neither, the oldest live session
        (the seed's single-session setups) is used.
        """
        await ws.accept()
        while True:
            try:
                text = await ws.receive_text()
            except WebSocketDisconnect:
                return
            except KeyError:  # a binary message
                await ws.send_json({"code": -1, "msg": "send text"})
                continue
            target, key = sessionid, secret
            try:
                if text.lstrip().startswith("{"):
                    message = json_object(text)
                    if "sessionid" in message:
                        target = session_id(message["sessionid"])
                    if isinstance(message.get("secret"), str):
                        key = message["secret"]
                    text = text_of(message)
                request = SessionRequest(sessionid=target or 0, secret=key)
                mine(ws, request).say(text)
            except (ApiError, InputError, ValueError) as exc:
                msg = exc.message if isinstance(exc, ApiError) else str(exc)
                try:
                    await ws.send_json({"code": -1, "msg": msg})
                except WebSocketDisconnect:  # it sent and went
                    return

    @app.post("/interrupt_talk", responses=answers(403, 404))
    async def interrupt_talk(body: SessionRequest, request: Request) -> dict[str, Any]:
        frame = mine(request, body).interrupt()
        return {"code": 0, "msg": "ok", "frame": frame}

    @app.post("/is_speaking", responses=answers(403, 404))
    async def is_speaking(body: SessionRequest, request: Request) -> dict[str, Any]:
        return {"code": 0, "data": mine(request, body).is_speaking}

    @app.post("/close", responses=answers(403, 404))
    async def close(body: SessionRequest, request: Request) -> dict[str, Any]:
        if not await sessions.close(mine(request, body).id):
            raise ApiError(404, f"unknown session {body.sessionid}")
        return {"code": 0, "msg": "ok"}

    @app.websocket("/ws")
    async def websocket_session(
        ws: WebSocket, avatar: str | None = None, mode: str | None = None
    ) -> None:
        """A whole session over one WebSocket (see `rtlipsync.transport.websocket`)."""
        await ws.accept()
        sink = WebSocketSink()
        try:
            session = await sessions.open_websocket(avatar, sink, mode, client_address(ws))
        except ApiError as exc:
            await ws.send_json({"type": "error", "msg": exc.message, "status": exc.status})
            await ws.close(code=1008)
            return
        w, h = session.avatar.size
        await ws.send_json(
            {
                "type": "session",
                "sessionid": session.id,
                "secret": sessions.secret(session.id),
                "width": w,
                "height": h,
                "fps": 25,
                "sample_rate": 16000,
                "mode": session.mode,
                "notice": session.notice,
            }
        )
        sender = asyncio.create_task(send_frames(ws, session, sink, config.stalled_client_timeout))
        receiver = asyncio.create_task(
            receive(ws, session, lambda text: _command(ws, session, text))
        )
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            stalled = sender.done() and isinstance(sender.exception(), ClientStalled)
            if stalled:
                log.info(
                    "%s: closing its session", sender.exception(), extra={"session": session.id}
                )
            elif sender.done() and not receiver.done():
                # The session was closed from elsewhere (POST /close, shutdown): so is its
                # socket, or its commands would go on driving a closed session.
                with contextlib.suppress(Exception):
                    await ws.send_json({"type": "closed", "msg": "the session was closed"})
                    await ws.close(code=1000)
            for task in (sender, receiver):
                error = task.exception() if task.done() and not task.cancelled() else None
                expected = (WebSocketDisconnect, OSError, ClientStalled)
                if error is not None and not isinstance(error, expected):
                    log.error("websocket failed", exc_info=error, extra={"session": session.id})
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await sessions.close(session.id)

    @app.get("/sessions/{session_id}", responses=answers(403, 404))
    async def session_state(
        session_id: int, request: Request, secret: str | None = None
    ) -> dict[str, Any]:
        """What the session is doing: its captions and transcript, for its owner."""
        s = mine(request, SessionRequest(sessionid=session_id, secret=secret))
        return {
            "sessionid": s.id,
            "avatar": s.avatar.name,
            "showing": s.showing.name,
            "speaking": s.is_speaking,
            "frame": s.last_index,
            "caption": s.caption,
            "notice": s.notice,
            "last_turn": s.last_turn,
            "heard": s.heard,
            "listening": s.listening,
            "chat": s.chat is not None,
            "mode": s.mode,
            "persona": s.persona or "",
        }

    document_gates(app)
    return app


def existing(path: str, media_roots: list[str] | tuple[str, ...] = ()) -> Path:
    """A file a request names to be read: inside the data root (`inside_root`) or one of
    the configured ``media_roots`` (read-only); a 404 if there is no such file."""
    resolved = inside_root(path, media_roots)
    if not resolved.is_file():
        raise ApiError(404, f"no file {path} in the data root or the media roots")
    return resolved


def _methods(app: FastAPI, scope: dict[str, Any]) -> set[str]:
    """The methods some route serves at this request's path."""
    found: set[str] = set()
    for route in app.routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(scope)[0] != Match.NONE:
            found |= methods
    return found


def client_address(connection: HTTPConnection) -> str:
    """The address a request came from (one client's sessions are counted together)."""
    return connection.client.host if connection.client is not None else ""


async def check_webhook(url: str, allowed: list[str]) -> None:
    """Refuse a webhook that is not http(s), or whose host resolves to a loopback, private,
    link-local or otherwise non-public address, unless the host is in ``allowed``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ApiError(400, "webhook must be an http:// or https:// URL")
    host = parsed.hostname
    if host in allowed:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parsed.port or 443)
    except OSError as exc:
        raise ApiError(400, f"webhook host {host} cannot be resolved: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise ApiError(
                400,
                f"webhook host {host} is a loopback or private address ({address}); "
                "name it in webhook_hosts to allow it",
            )


def json_object(text: str) -> dict[str, Any]:
    """A WebSocket message as a JSON object, or an `ApiError` saying what is wrong with it
    (never a crash: a deeply nested message made the parser give up with RecursionError)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"not JSON: {exc}") from exc
    except RecursionError:
        raise ApiError(400, "message is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "a message is a JSON object")
    return value


def text_of(message: dict[str, Any]) -> str:
    """A message's ``text``: a string, or an `ApiError` (``null`` became the text "None")."""
    text = message.get("text", "")
    if not isinstance(text, str):
        raise ApiError(400, f"text must be a string, got {json.dumps(text)[:40]}")
    return text


def session_id(value: object) -> int:
    """A ``sessionid`` from a JSON message: a whole number, or an `ApiError`."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, f"sessionid must be a whole number, got {json.dumps(value)[:40]}")
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"sessionid must be a whole number, got {value!r:.40}") from None


async def _command(ws: WebSocket, session: Session, text: str) -> None:
    """One JSON command from a session's WebSocket (see `rtlipsync.transport.websocket`)."""
    try:
        command = json_object(text)
        if "type" not in command:
            raise ApiError(400, 'a message is a JSON object with a "type"')
        kind = command["type"]
        if kind == "say":
            session.say(text_of(command), bool(command.get("interrupt", False)))
        elif kind == "chat":
            session.converse(text_of(command), bool(command.get("interrupt", True)))
        elif kind == "interrupt":
            session.interrupt()
        elif kind == "persona":
            session.set_persona(text_of(command))
        elif kind == "memory":
            try:
                said = MEMORY.validate_python(command.get("messages"))
            except ValidationError as exc:
                raise ApiError(
                    400,
                    f"messages must be at most {MAX_MEMORY} of "
                    f'{{"role": "user" | "assistant", "content": text}}: {exc.errors()[0]["msg"]}',
                ) from None
            session.restore([m.model_dump() for m in said])
        elif kind == "close":
            await ws.close()
            raise WebSocketDisconnect(1000)
        else:
            raise ApiError(
                400,
                f"unknown message type {kind!r}: use say, chat, interrupt, persona, memory or "
                "close",
            )
    except ApiError as exc:  # (said to the client; the session carries on)
        raise InputError(exc.message) from exc
