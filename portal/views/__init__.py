"""The portal's HTML pages as function views, one module per area.

Each module has one access helper per resource that returns the object or raises 404
(``_get_application_for_user``), so no view can reach another user's data.
"""
