"""The simulator of what the service talks to outside: pump controllers (`device`) and a
weather API (`weather`), served together by `app` for development, demos and tests."""
