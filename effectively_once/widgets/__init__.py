"""ipywidgets front ends over :mod:`effectively_once.theory` (rendering only, no logic of their own).

- :class:`effectively_once.widgets.message_loss.MessageLossWidget`: the animated lossy channel
  (an anywidget front end, ``message_loss.js``, plays it in the browser).
- :class:`effectively_once.widgets.generals_proof.GeneralsProofWidget`: a stepper through the proof.
"""
