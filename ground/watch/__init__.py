"""Standing queries over a live video stream: `python -m ground watch`.

    python -m ground watch --ckpt M.ckpt --source rtsp://127.0.0.1/cam --query "a person enters"

The parts, in the order a frame meets them:

- `source`: opens anything PyAV opens (a file played at its rate, a URL, a V4L2 device, `-` for
  MPEG-TS on stdin) in a reader thread, picks one frame per feature window by stream timestamps
  (the frame `extract` would pick offline), reconnects with backoff and counts corrupt packets.
- `ring`: the last W seconds of features, a fixed-size ring buffer (memory stays constant).
- `tracker`: hysteresis over each query's successive answers, turning them into
  `started` / `ongoing` / `ended` events, one occurrence reported once and then updated.
- `watcher`: encodes frames in batches as they arrive, grounds every standing query on the window
  every S seconds of stream time, and the `watch` command (signals, stalls, the events file).
"""
