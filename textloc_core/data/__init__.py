"""What goes in: concept sets (photos, masks, identifier tokens), read from folders and checked.

concepts (the data types), readers + layout (folder, manifest and paper layouts), masks and
imaging (normal forms, resizing, picture files), tokens (the identifier-token text rules),
validation (every fixable problem, the one validator), safe_io (names, atomic writes, no
pickle). No model here; the lowest layer.
"""
