from irrigation.cli import app

app()
