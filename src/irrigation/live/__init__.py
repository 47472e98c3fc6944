"""The live feed's endpoints: single-use tickets, Server-Sent Events (`GET /v1/events`) and
a WebSocket (`/v1/live`) over each site's event stream (`irrigation.feed`)."""
