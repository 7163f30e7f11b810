"""Layer 1, core: conventions every other layer shares. ``params`` (the parameter spec and its resolver), ``coords``
(the labels' integer convention and the continuous points), ``geometry`` (crop frames and their inverse), ``files``
(atomic writes, fingerprints), ``images`` (decoding policy), ``devices`` (the torch device). Imports nothing of the
package.
"""
