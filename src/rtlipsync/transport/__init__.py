"""Ways frames leave a session: WebRTC, WebSocket, recorder."""
