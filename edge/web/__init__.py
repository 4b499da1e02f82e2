"""`edge web`: the live views of the line (docs/live-view.md).

    model.py   pure: the public subtree's messages folded into what each view shows
    mqtt.py    the broker link: a read-only subscriber thread (account `web`), reconnecting
    pages.py   the HTML shells, the visitor's page, the engraving preview (SVG), refusals
    app.py     Starlette + uvicorn: the pages, the JSON API, the Server-Sent Events streams
    settings.py  what it runs with: flags, or a config file's [web] section
    static/    CSS and JS, every asset local: the trailer has no internet
"""
