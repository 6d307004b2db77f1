/* Starts ReDoc (templates/drf_spectacular/redoc.html). ReDoc styles itself with <style>
   elements; the Content-Security-Policy admits them with this response's nonce, which this
   script carries and ReDoc copies onto each. */
(function () {
  "use strict";
  var box = document.getElementById("redoc-container");
  Redoc.init(box.dataset.specUrl, {nonce: document.currentScript.nonce}, box);
})();
