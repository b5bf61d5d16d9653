"""What only the Gradio app uses: the Compare, Experiments and Data views, upload hygiene and inline media.

Nothing in training imports this package; it builds on the rest of ``brainmri``, never the other way round.
"""
