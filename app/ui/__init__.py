"""The web dashboard's files (static/): one HTML page, a stylesheet and vanilla JS modules, shipped inside the
package and served by app.api.ui at /ui. No build step and no CDN: machines may be offline."""
