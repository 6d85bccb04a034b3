"""The simulated platforms: what Twilio and Asterisk would do to a running service.

It never imports the service (``ivr.service``, ``ivr.calls``, ``storage``): it speaks HTTP,
websockets and RTP only, so it sees exactly what a platform would see and can drive a local
``ivr serve`` or any deployment (``tests/test_architecture.py`` holds it to that).

- ``wsclient``, ``twilio_wire``: Twilio's side of the wire, for the simulator and the load test;
- ``twilio_sim``: one Twilio call (``ivr simulate``); ``asterisk_sim``: one PBX call
  (``ivr simulate --platform asterisk``); ``cli``: that command;
- ``fake_asterisk/``: a fake Asterisk 22 (ARI and external-media RTP) for both;
- ``loadtest/``: many calls at once, on either platform (``ivr loadtest``);
- ``audio``: the callers' and agents' voices (looped μ-law frames).
"""
