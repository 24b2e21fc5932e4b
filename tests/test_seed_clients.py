"""Seed 002's client examples, as its README writes them (aiohttp; only the file paths
filled in and the port pointed at the test server), against a live server with one live
session: each must print what a user of the seed expects.

The snippets are copied here verbatim so the test runs without the seed at hand; when the
seed is there, a test checks that they still match it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import websockets

from conftest import serving, write_wav

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "002_22bcd5f3a7d707f6.txt"

HUMANECHO = """
import asyncio
import aiohttp

async def send_message_via_websocket():
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect('ws://localhost:8010/humanecho') as ws:
            print("WebSocket connection established!")

            # Send a text message
            await ws.send_str("Hello, Avatar!")

            # Receive response (if any)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    print(f"Response from server: {msg.data}")
                elif msg.type == aiohttp.WSMsgType.CLOSED:
                    break

# Run the WebSocket client
asyncio.run(send_message_via_websocket())
"""

HUMANAUDIO = """
import aiohttp

async def upload_audio_file(session_id, file_path):
    async with aiohttp.ClientSession() as session:
        with open(file_path, 'rb') as file:
            audio_data = {'file': file}
            payload = {'sessionid': str(session_id)}
            form = aiohttp.FormData()
            form.add_field('sessionid', str(session_id))
            form.add_field('file', open(file_path, 'rb'), filename=file_path)

            async with session.post('http://localhost:8010/humanaudio', data=form) as response:
                response_json = await response.json()
                print(f"Response: {response_json}")

# Example usage
session_id = 0
file_path = '/path/to/your/audio.wav'
asyncio.run(upload_audio_file(session_id, file_path))
"""

SET_AUDIOTYPE = """
import aiohttp

async def set_audio_type(session_id, audio_type, reinit=False):
    payload = {
        'sessionid': session_id,
        'audiotype': audio_type,
        'reinit': reinit
    }

    async with aiohttp.ClientSession() as session:
        async with session.post('http://localhost:8010/set_audiotype', json=payload) as response:
            result = await response.json()
            print(f"Audio type set response: {result}")

# Example usage
asyncio.run(set_audio_type(0, 'stereo', reinit=True))
"""

RECORD = """
import aiohttp

async def record_avatar(session_id, action_type):
    payload = {
        'sessionid': session_id,
        'type': action_type  # either 'start_record' or 'end_record'
    }

    async with aiohttp.ClientSession() as session:
        async with session.post('http://localhost:8010/record', json=payload) as response:
            result = await response.json()
            print(f"Record action response: {result}")

# Example usage to start recording
asyncio.run(record_avatar(0, 'start_record'))

# Example usage to stop recording
asyncio.run(record_avatar(0, 'end_record'))
"""

IS_SPEAKING = """
import aiohttp

async def is_avatar_speaking(session_id):
    payload = {
        'sessionid': session_id
    }

    async with aiohttp.ClientSession() as session:
        async with session.post('http://localhost:8010/is_speaking', json=payload) as response:
            result = await response.json()
            print(f"Is avatar speaking: {result['data']}")

# Example usage
asyncio.run(is_avatar_speaking(0))
"""


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.skipif(not SEED.exists(), reason="the seed documents are not at hand")
def test_the_snippets_here_are_the_seed_s_own() -> None:
    seed = _squash(SEED.read_text())
    for snippet in (HUMANECHO, HUMANAUDIO, SET_AUDIOTYPE, RECORD, IS_SPEAKING):
        assert _squash(snippet) in seed, snippet[:80]


def _run(code: str, base: str, timeout: float) -> str:
    """Run a snippet pointed at ``base``; what it printed (killed after ``timeout``)."""
    code = code.replace("localhost:8010", base.split("://", 1)[1])
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout or b""
        return out.decode() if isinstance(out, bytes) else out
    assert done.returncode == 0, done.stderr[-1500:]
    return done.stdout


def test_seed_002_client_examples_work_unchanged(default_avatar, speech, tmp_path) -> None:  # noqa: ANN001
    wav = tmp_path / "audio.wav"
    write_wav(wav, speech.pcm, speech.sample_rate)
    with serving() as base:
        ready = threading.Event()
        done = threading.Event()
        session: dict = {}

        def live_session() -> None:  # the one live session the seed's examples address
            async def hold() -> None:
                url = base.replace("http://", "ws://") + "/ws?mode=repeat"
                async with websockets.connect(url) as ws:
                    session.update(json.loads(await ws.recv()))
                    ready.set()
                    while not done.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), 0.2)
                        except TimeoutError:
                            pass

            asyncio.run(hold())

        holder = threading.Thread(target=live_session)
        holder.start()
        try:
            assert ready.wait(30)
            sid = session["sessionid"]

            def speaking() -> bool:
                return httpx.get(f"{base}/sessions/{sid}").json()["speaking"]

            # 3.1: the echo socket speaks in the live session, and answers nothing back
            out = _run(HUMANECHO, base, timeout=6)
            assert out.splitlines() == ["WebSocket connection established!"], out
            heard = httpx.get(f"{base}/sessions/{sid}").json()
            assert heard["caption"] == "Hello, Avatar!" or heard["speaking"], heard

            # 3.2 .. 3.6 run one after another in one interpreter (3.2 uses the asyncio
            # that 3.1 imported), as a reader pasting them in order would.
            steps = "import asyncio\n" + "\n".join(
                [
                    HUMANAUDIO.replace("/path/to/your/audio.wav", str(wav)),
                    SET_AUDIOTYPE,
                    RECORD,
                    IS_SPEAKING,
                ]
            )
            lines = _run(steps, base, timeout=60).splitlines()
            assert lines[0] == "Response: {'code': 0, 'msg': 'ok'}", lines
            assert lines[1].startswith("Audio type set response: {'code': -1, 'msg': ")
            assert "no action clip named 'stereo'" in lines[1] and "0 goes back" in lines[1]
            assert lines[2].startswith("Record action response: {'code': 0, 'msg': 'ok'")
            assert lines[3].startswith("Record action response: {'code': 0, 'msg': 'ok'")
            assert lines[4] in ("Is avatar speaking: True", "Is avatar speaking: False")
            assert speaking()  # the uploaded audio is still being lip-synced
        finally:
            done.set()
            holder.join(timeout=10)


def test_media_roots_let_requests_read_files_outside_the_data_root(
    default_avatar, tmp_path, speech
) -> None:  # noqa: ANN001
    from rtlipsync.server import ServerConfig

    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "line.wav", speech.pcm, speech.sample_rate)
    ids = {"user_id": "u", "request_id": "r", "streamer_id": "default"}
    body = {**ids, "tts_path": str(media / "line.wav")}
    with serving() as base:
        r = httpx.post(f"{base}/digital_human/gen", json=body, timeout=60)
        assert r.status_code == 403 and "media_roots" in r.json()["msg"]
    with serving(ServerConfig(media_roots=[str(media)])) as base:
        r = httpx.post(f"{base}/digital_human/gen", json=body, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{base}/digital_human/gen", json={**body, "tts_path": "/etc/hostname"})
        assert r.status_code == 403
    assert sorted(os.listdir(media)) == ["line.wav"]  # nothing written there
