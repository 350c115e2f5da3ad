"""Foundation floor of rrg: typed-config machinery, registries, atomic writes, label sets.

It sits beside the YAML run configs and imports nothing from the rest of rrg, so every
package (shards < modeling < trainer < cluster < launcher) may use it.
"""
