//! `meshgate protect`: placeholder.
